"""End-to-end benchmark: crosslora_jax against a reference-style baseline, same inputs, one run.

    python tools/bench_transfer.py --layers=2 --out=docs/benchmark.md

Writes paper-shaped synthetic checkpoints (Qwen2.5-1.5B → Llama-3.2-3B per-layer shapes, all 7
roles, bf16, spectra from crosslora_jax.synthetic.Spectrum) and a rank-16 bf16 LoRA on every
projection, then runs each variant in its own process (so peak RSS is its own):

- ours/exact, ours/randomized: `crosslora_jax.transfer`, method cross_lora, SVD rank 320.
- ours/exact warm cache: a second adapter with `cache_dir` already filled by the exact run.
- baseline: what the public reference code does — load both whole models, then for each
  lora_A and lora_B tensor separately a full SVD of both base matrices and a least-squares
  alignment that is then discarded, and pad/truncate (4 SVDs per module, float32 NumPy).
- ours/randomized at `--layers` and 2×`--layers`: peak RSS against depth.

Vocabulary is cut to 1024 (embeddings are never read by the transfer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

QWEN = dict(hidden=1536, intermediate=8960, heads=12, kv_heads=2, head_dim=128)
LLAMA = dict(hidden=3072, intermediate=8192, heads=24, kv_heads=8, head_dim=128)
ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def make_inputs(work: Path, layers: int) -> dict[str, Path]:
    from crosslora_jax import synthetic

    root = work / f"L{layers}"
    paths = {"source": root / "qwen", "target": root / "llama", "a1": root / "adapter1", "a2": root / "adapter2"}
    marker = {
        "source": "config.json",
        "target": "config.json",
        "a1": "adapter_config.json",
        "a2": "adapter_config.json",
    }
    if all((paths[k] / name).exists() for k, name in marker.items()):
        return paths
    src = synthetic.model_config("qwen2", layers=layers, vocab=1024, **QWEN)
    tgt = synthetic.model_config("llama", layers=layers, vocab=1024, **LLAMA)
    started = time.perf_counter()
    synthetic.write_model(paths["source"], src, synthetic.model_tensors(src, seed=0), dtype="bfloat16")
    synthetic.write_model(paths["target"], tgt, synthetic.model_tensors(tgt, seed=1), dtype="bfloat16", shards=2)
    for n, key in enumerate(("a1", "a2")):
        synthetic.write_adapter(paths[key], src, seed=10 + n, roles=ROLES, rank=16, alpha=32, dtype="bfloat16")
    print(f"wrote inputs for {layers} layers in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return paths


# ----------------------------------------------------------------------------- children


def child_ours(args: argparse.Namespace) -> dict:
    from crosslora_jax import SvdSettings, TransferOptions, transfer

    options = TransferOptions(
        method="cross_lora", svd=SvdSettings(rank=args.svd_rank, engine=args.engine), layers_per_chunk=args.chunk
    )
    started = time.perf_counter()
    (report,) = transfer(args.source, args.target, [args.adapter], args.output, options, overwrite=True,
                         cache_dir=args.cache_dir)  # fmt: skip
    return {"wall": time.perf_counter() - started, **report["timings"], **report["subspaces"]}


def child_baseline(args: argparse.Namespace) -> dict:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from crosslora_jax import read_adapter, read_model_config

    started = time.perf_counter()
    t_io = time.perf_counter()

    def load_all(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
        return out

    src_w, tgt_w = load_all(Path(args.source)), load_all(Path(args.target))
    src_cfg, tgt_cfg = read_model_config(args.source), read_model_config(args.target)
    adapter = read_adapter(args.adapter, src_cfg)
    io = time.perf_counter() - t_io
    svd_time, out = 0.0, {}

    def pad(x, rows, cols):
        y = np.zeros((rows, cols), np.float32)
        y[: min(rows, x.shape[0]), : min(cols, x.shape[1])] = x[:rows, :cols]
        return y

    for (role, layer), module in sorted(adapter.modules.items()):
        a, b = adapter.read_factors([module])
        w_s = src_w[src_cfg.arch.weight_name(role, layer)]
        w_t = tgt_w[tgt_cfg.arch.weight_name(role, layer)]
        r = args.svd_rank
        for factor in ("A", "B"):  # the reference handles each factor separately
            t0 = time.perf_counter()
            u_s, _, vt_s = np.linalg.svd(w_s, full_matrices=False)
            u_t, _, vt_t = np.linalg.svd(w_t, full_matrices=False)
            svd_time += time.perf_counter() - t0
            if factor == "A":
                q = min(vt_s.shape[1], vt_t.shape[1])
                np.linalg.lstsq(vt_s[:r, :q].T, vt_t[:r, :q].T, rcond=None)  # computed, then unused
            else:
                p = min(u_s.shape[0], u_t.shape[0])
                np.linalg.lstsq(u_s[:p, :r], u_t[:p, :r], rcond=None)
        m_t, n_t = tgt_cfg.shapes[role]
        path = tgt_cfg.arch.module_path(role, layer)
        out[f"base_model.model.{path}.lora_A.weight"] = pad(a[0], a.shape[1], n_t)
        out[f"base_model.model.{path}.lora_B.weight"] = pad(b[0], m_t, b.shape[2])
    Path(args.output).mkdir(parents=True, exist_ok=True)
    save_file(out, str(Path(args.output) / "adapter_model.safetensors"))
    return {"wall": time.perf_counter() - started, "svd_seconds": svd_time, "read_seconds": io}


def run_child(args: list[str]) -> dict:
    """Run one variant in a fresh process; its result plus its own peak RSS (MB)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child {args} failed with status {status}")
    return {**json.loads(out.strip().splitlines()[-1]), "rss_mb": usage.ru_maxrss / 1024}


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--svd_rank", type=int, default=320)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--work", default="tools/out/bench")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    for name in ("source", "target", "adapter", "output", "cache_dir", "engine"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_ours(args) if args.child == "ours" else child_baseline(args)))
        return

    work = Path(args.work).resolve()
    small, deep = make_inputs(work, args.layers), make_inputs(work, 2 * args.layers)
    common = [f"--svd_rank={args.svd_rank}", f"--chunk={args.chunk}"]

    def ours(paths, engine, out, adapter="a1", cache=None):
        extra = [f"--cache_dir={cache}"] if cache else []
        return run_child(["--child=ours", f"--source={paths['source']}", f"--target={paths['target']}",
                          f"--adapter={paths[adapter]}", f"--output={work / out}", f"--engine={engine}",
                          *common, *extra])  # fmt: skip

    cache = work / "cache"
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    rows = {}
    rows["baseline (reference-style)"] = run_child(["--child=baseline", f"--source={small['source']}",
        f"--target={small['target']}", f"--adapter={small['a1']}", f"--output={work / 'o_base'}", *common])  # fmt: skip
    # The exact run also fills the cache (about 45 ms of orbax saves per layer and role).
    rows["ours, exact SVD (1st adapter)"] = ours(small, "exact", "o_exact", cache=cache)
    rows["ours, exact, warm cache (2nd adapter)"] = ours(small, "exact", "o_warm", adapter="a2", cache=cache)
    rows["ours, randomized SVD"] = ours(small, "randomized", "o_rand")
    rows[f"ours, randomized, {2 * args.layers} layers"] = ours(deep, "randomized", "o_deep")

    base = rows["baseline (reference-style)"]["wall"]
    cold = rows["ours, exact SVD (1st adapter)"]["wall"]
    command = "python tools/bench_transfer.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--out"))
    lines = [
        f"`{command.strip()}`",
        "",
        f"Qwen2.5-1.5B → Llama-3.2-3B shapes, {args.layers} layers × 7 roles, LoRA rank 16, SVD rank {args.svd_rank}; "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"jax {__import__('jax').__version__}.",
        "",
        "| variant | wall s | s / layer | SVD s | project s | read s | peak RSS MB | speed-up vs baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        layers = 2 * args.layers if "layers" in name else args.layers
        lines.append(
            f"| {name} | {r['wall']:.1f} | {r['wall'] / layers:.1f} | {r.get('svd_seconds', 0):.1f} | "
            f"{r.get('project_seconds', 0):.2f} | {r.get('read_seconds', 0):.1f} | {r['rss_mb']:.0f} | "
            f"{base / r['wall']:.1f}× |"
        )
    warm = rows["ours, exact, warm cache (2nd adapter)"]["wall"]
    lines += ["", f"Warm cache: second adapter took {100 * warm / cold:.1f} % of the first "
              f"({rows['ours, exact, warm cache (2nd adapter)'].get('computed_layers')} SVD layers computed)."]  # fmt: skip
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
