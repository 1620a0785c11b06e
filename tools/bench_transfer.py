"""End-to-end benchmark: crosslora_jax against a reference-style baseline, same inputs, one run.

    python tools/bench_transfer.py --layers=1 --out=table.md                     # the 2-core CPU table
    python tools/bench_transfer.py --pair=8b --layers=32 --variants=gram,warm,exact,baseline \\
        --baseline_backend=jax --baseline_layers=1 --drop_caches                   # GPU (tools/gpu_8b.sh)

Writes paper-shaped synthetic checkpoints (`--pair=1.5b-3b`: Qwen2.5-1.5B → Llama-3.2-3B per-layer
shapes; `--pair=8b`: Llama-3-8B → Llama-3.1-8B shapes), all 7 roles, bf16, one shard per layer,
power-law spectra (crosslora_jax.synthetic.Spectrum) drawn on the JAX device, or with
`--weights=flat` flat random-matrix bulks (crosslora_jax.synthetic.flat_bulk_weight: Gaussian
with a slowly varying column scale, like trained projections; the hard case for the default
engine, issue 22), and two rank-16 bf16 LoRAs on every projection. Then runs each variant in its own process, so peak RSS is its own:

- baseline: what the public reference code does — load both whole models as float32, then for
  each lora_A and lora_B tensor separately a full SVD of both base matrices and a least-squares
  alignment that is then discarded, and pad/truncate (4 SVDs per module), its SVDs by NumPy.
  `--baseline_backend=jax` runs those SVDs with jnp.linalg.svd on the default device (what the
  reference does on a GPU with torch); `--baseline_layers=N` times only the first N layers and
  extrapolates (marked).
- torch_baseline: the same with torch.linalg.svd (torch's LAPACK, on the CPU), as the reference
  code itself calls it. Ratios are taken against the FASTER of the baseline rows present.
- gram: `crosslora_jax.transfer`, cross_lora, SVD rank 320, the default gram engine; fills a cache.
- warm: the second adapter with that cache: no SVD is computed.
- programs: the first adapter again with an empty subspace cache but the XLA programs the gram row
  compiled (what a second model pair of the same shapes costs: every SVD, no compile).
- exact: the same with the exact engine (its own cache); "ΔW_t vs exact" of the other rows is
  measured against it.
- randomized: the randomized engine with `--power_iters`/`--oversample`, or one row per
  `P:O` in `--randomized=P:O,P:O,...` (power iterations : oversampling); its "ΔW_t vs exact"
  column is ‖ΔW_rand − ΔW_exact‖_F / ‖ΔW_exact‖_F over all modules (max per module in brackets).
- fleet: `--fleet` adapters (default 10) for the same model pair in one `transfer` call (what
  `--adapter` repeated does), default engine, cold; compared with that many baseline runs, taken
  as that many times the baseline row of the same bench run (each baseline run does the same
  work: it has no cache).
- depth: the randomized engine with `--depth_chunk` layers per chunk at `--layers` and at twice
  as many: peak RSS against depth.

Vocabulary is cut to 1024 (embeddings are never read by the transfer). With `--drop_caches` the
page cache is dropped before each variant (root only), so reads come from disk.
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

from _randomized_arg import randomized_settings

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
PAIRS = {
    "1.5b-3b": (
        "Qwen2.5-1.5B → Llama-3.2-3B shapes",
        ("qwen2", dict(hidden=1536, intermediate=8960, heads=12, kv_heads=2, head_dim=128)),
        ("llama", dict(hidden=3072, intermediate=8192, heads=24, kv_heads=8, head_dim=128)),
    ),
    "8b": (
        "Llama-3-8B → Llama-3.1-8B shapes",
        ("llama", dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128)),
        ("llama", dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128)),
    ),
    "tiny": (  # for tests/tools: seconds, any machine
        "tiny qwen2 → llama shapes",
        ("qwen2", dict(hidden=64, intermediate=96, heads=4, kv_heads=2, head_dim=16)),
        ("llama", dict(hidden=96, intermediate=128, heads=4, kv_heads=2, head_dim=24)),
    ),
}
VARIANTS = ("baseline", "torch_baseline", "gram", "warm", "programs", "exact", "randomized", "fleet", "depth")
BASELINES = {
    "baseline": "baseline (reference-style, NumPy SVD)",
    "torch_baseline": "baseline (reference-style, torch SVD)",
}
GRAM = "ours, gram SVD (default; 1st adapter, fills cache)"
WARM = "ours, gram, warm cache (2nd adapter)"
PROGRAMS = "ours, gram, empty subspace cache, XLA programs cached"
EXACT = "ours, exact SVD (1st adapter, fills its cache)"


def make_inputs(work: Path, pair: str, layers: int, weights: str = "power") -> dict[str, Path]:
    from crosslora_jax import synthetic

    root = work / (f"{pair}-L{layers}" + ("" if weights == "power" else f"-{weights}"))
    paths = {"source": root / "source", "target": root / "target", "a1": root / "adapter1", "a2": root / "adapter2"}
    done = root / "complete"
    if done.exists():
        return paths
    _, (src_type, src_dims), (tgt_type, tgt_dims) = PAIRS[pair]
    src = synthetic.model_config(src_type, layers=layers, vocab=1024, **src_dims)
    tgt = synthetic.model_config(tgt_type, layers=layers, vocab=1024, **tgt_dims)
    started = time.perf_counter()
    spectrum = synthetic.Spectrum() if weights == "power" else None
    synthetic.write_model_by_layer(paths["source"], src, seed=0, spectrum=spectrum)
    synthetic.write_model_by_layer(paths["target"], tgt, seed=1, spectrum=spectrum)
    for n, key in enumerate(("a1", "a2")):
        synthetic.write_adapter(paths[key], src, seed=10 + n, roles=ROLES, rank=16, alpha=32, dtype="bfloat16")
    done.touch()
    print(f"wrote inputs for {pair}, {layers} layers in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return paths


# ----------------------------------------------------------------------------- children


def child_ours(args: argparse.Namespace) -> dict:
    import jax

    from crosslora_jax import SvdSettings, TransferOptions, enable_compilation_cache, transfer

    if args.cache_dir or args.program_cache:  # as the CLI does with --cache_dir
        enable_compilation_cache(args.program_cache or args.cache_dir)
    svd = SvdSettings(rank=args.svd_rank, engine=args.engine, power_iters=args.power_iters, oversample=args.oversample)
    options = TransferOptions(method="cross_lora", svd=svd, layers_per_chunk=args.chunk)
    started = time.perf_counter()
    if args.trace:  # a jax.profiler trace of this whole row (TensorBoard / Perfetto)
        jax.profiler.start_trace(args.trace)
    reports = transfer(args.source, args.target, args.adapter.split(","), args.output, options, overwrite=True,
                       cache_dir=args.cache_dir)  # fmt: skip
    if args.trace:
        jax.profiler.stop_trace()
    report = reports[0]
    return {"wall": time.perf_counter() - started, **report["timings"], **report["subspaces"], "adapters": len(reports)}


def child_baseline(args: argparse.Namespace) -> dict:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from crosslora_jax import read_adapter, read_model_config

    if args.backend == "torch":
        import torch  # test extra only: imported here so the tool runs without it otherwise

        def factors(w):
            return tuple(x.numpy() for x in torch.linalg.svd(torch.from_numpy(w), full_matrices=False))
    elif args.backend == "jax":
        import jax
        import jax.numpy as jnp

        @jax.jit
        def svd(w):
            return jnp.linalg.svd(w, full_matrices=False)

        def factors(w):
            return tuple(np.asarray(x) for x in jax.block_until_ready(svd(w)))
    else:

        def factors(w):
            return np.linalg.svd(w, full_matrices=False)

    started = time.perf_counter()

    def load_all(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
        return out

    src_w, tgt_w = load_all(Path(args.source)), load_all(Path(args.target))
    src_cfg, tgt_cfg = read_model_config(args.source), read_model_config(args.target)
    adapter = read_adapter(args.adapter, src_cfg)
    io = time.perf_counter() - started
    svd_time, out = 0.0, {}

    def pad(x, rows, cols):
        y = np.zeros((rows, cols), np.float32)
        y[: min(rows, x.shape[0]), : min(cols, x.shape[1])] = x[:rows, :cols]
        return y

    layers = args.baseline_layers or src_cfg.num_layers
    for (role, layer), module in sorted(adapter.modules.items()):
        if layer >= layers:
            continue
        a, b = adapter.read_factors([module])
        w_s = src_w[src_cfg.arch.weight_name(role, layer)]
        w_t = tgt_w[tgt_cfg.arch.weight_name(role, layer)]
        r = args.svd_rank
        for factor in ("A", "B"):  # the reference handles each factor separately
            t0 = time.perf_counter()
            u_s, _, vt_s = factors(w_s)
            u_t, _, vt_t = factors(w_t)
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
    wall = time.perf_counter() - started
    result = {"wall": wall, "svd_seconds": svd_time, "read_seconds": io, "layers_timed": layers}
    if layers < src_cfg.num_layers:  # extrapolate the per-layer work, keep the one-off load
        result["wall"] = io + (wall - io) * src_cfg.num_layers / layers
        result["svd_seconds"] = svd_time * src_cfg.num_layers / layers
    return result


def run_child(args: list[str], drop_caches: bool) -> dict:
    """Run one variant in a fresh process; its result plus its own peak RSS (MB)."""
    if drop_caches:
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as e:
            raise SystemExit(f"--drop_caches: cannot drop the page cache ({e}); run as root or leave it out") from None
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child {args} failed with status {status}")
    return {**json.loads(out.strip().splitlines()[-1]), "rss_mb": usage.ru_maxrss / 1024}


def delta_error(output: Path, reference: Path) -> tuple[float, float]:
    """‖Δ − Δ_ref‖_F / ‖Δ_ref‖_F over all modules (and the worst module), Δ = B·A, in float64
    through r×r Gram products so no m×n matrix is formed."""
    import numpy as np
    from safetensors.numpy import load_file

    ours, ref = load_file(str(output / "adapter_model.safetensors")), load_file(str(reference / "adapter_model.safetensors"))  # fmt: skip
    num = den = 0.0
    worst = 0.0
    for key in ref:
        if not key.endswith("lora_A.weight"):
            continue
        b_key = key.replace("lora_A", "lora_B")
        a1, b1 = ours[key].astype(np.float64), ours[b_key].astype(np.float64)
        a2, b2 = ref[key].astype(np.float64), ref[b_key].astype(np.float64)

        def inner(a, b, c, d):
            return float(np.sum((b.T @ d) * (a @ c.T)))

        diff = inner(a1, b1, a1, b1) - 2 * inner(a1, b1, a2, b2) + inner(a2, b2, a2, b2)
        size = inner(a2, b2, a2, b2)
        num, den = num + max(diff, 0.0), den + size
        worst = max(worst, np.sqrt(max(diff, 0.0) / size) if size > 0 else 0.0)
    return float(np.sqrt(num / den)), float(worst)


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=sorted(PAIRS), default="1.5b-3b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--weights", choices=["power", "flat"], default="power",
                        help="base weights: power-law spectra, or flat random-matrix bulks (issue 22)")  # fmt: skip
    parser.add_argument("--svd_rank", type=int, default=320)
    parser.add_argument("--chunk", type=int, default=4, help="layers per chunk for baseline-comparison rows")
    parser.add_argument("--fleet", type=int, default=10, help="adapters in the fleet row")
    parser.add_argument("--depth_chunk", type=int, default=1, help="layers per chunk for the depth (RSS) rows")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--power_iters", type=int, default=2, help="randomized rows")
    parser.add_argument("--oversample", type=int, default=16, help="randomized rows")
    parser.add_argument("--randomized", type=randomized_settings, default=[], help="P:O[,P:O...]: one randomized "
                        "row per setting (overrides --power_iters/--oversample for those rows)")  # fmt: skip
    parser.add_argument("--baseline_backend", choices=["numpy", "jax"], default="numpy",
                        help="the 'baseline' row's SVDs (torch_baseline always uses torch)")  # fmt: skip
    parser.add_argument("--baseline_layers", type=int, default=0, help="time the baseline on this many layers")
    parser.add_argument("--drop_caches", action="store_true")
    parser.add_argument("--trace_warm", default=None, help="write a jax.profiler trace of the warm row here")
    parser.add_argument("--work", default="tools/out/bench")
    parser.add_argument("--out", default=None, help="also write the markdown table here (after every row)")
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    for name in ("source", "target", "adapter", "output", "cache_dir", "program_cache", "engine", "backend", "trace"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_ours(args) if args.child == "ours" else child_baseline(args)))
        return
    variants = [v for v in args.variants.split(",") if v]  # none: only write the inputs
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    settings = args.randomized or [(args.power_iters, args.oversample)]

    COMMIT[:] = [_commit()]  # at the start: the code every row runs
    work = Path(args.work).resolve()
    started = time.perf_counter()
    small = make_inputs(work, args.pair, args.layers, args.weights)
    input_seconds = time.perf_counter() - started
    common = [f"--svd_rank={args.svd_rank}"]

    def ours(paths, engine, out, adapter="a1", cache=None, chunk=args.chunk, setting=settings[0], trace=None,
             program_cache=None):  # fmt: skip
        extra = [f"--cache_dir={cache}"] if cache else []
        # not "--xla_cache": JAX puts every "--xla…" argv entry into its compilation-cache key
        extra += [f"--program_cache={program_cache}"] if program_cache else []
        extra += [f"--trace={trace}"] if trace else []
        return run_child(["--child=ours", f"--source={paths['source']}", f"--target={paths['target']}",
                          f"--adapter={paths[adapter]}", f"--output={work / out}", f"--engine={engine}",
                          f"--chunk={chunk}", f"--power_iters={setting[0]}", f"--oversample={setting[1]}",
                          *common, *extra], args.drop_caches)  # fmt: skip

    import shutil

    caches = {"gram": work / "cache", "exact": work / "cache_exact", "programs": work / "cache_programs"}
    for folder in caches.values():
        shutil.rmtree(folder, ignore_errors=True)
    rows: dict[str, dict] = {}
    layers_of: dict[str, int] = {}

    def record(name: str, result: dict, layers: int = args.layers) -> None:
        rows[name], layers_of[name] = result, layers
        table = render(args, rows, layers_of, input_seconds)
        print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(table + "\n")

    randomized = {(p, o): f"ours, randomized SVD (p={p}, oversample={o})" for p, o in settings}
    for variant in variants:  # in the order given, so a time limit cuts the last ones
        if variant in BASELINES:
            backend = "torch" if variant == "torch_baseline" else args.baseline_backend
            record(BASELINES[variant], run_child(["--child=baseline", f"--source={small['source']}",
                   f"--target={small['target']}", f"--adapter={small['a1']}", f"--output={work / f'o_{variant}'}",
                   f"--backend={backend}", f"--baseline_layers={args.baseline_layers}", *common],
                   args.drop_caches))  # fmt: skip
        elif variant == "gram":
            record(GRAM, ours(small, "gram", "o_gram", cache=caches["gram"]))
        elif variant == "warm":
            if GRAM not in rows:
                parser.error("--variants: 'warm' needs 'gram' before it")
            record(WARM, ours(small, "gram", "o_warm", adapter="a2", cache=caches["gram"], trace=args.trace_warm))
        elif variant == "programs":
            if GRAM not in rows:
                parser.error("--variants: 'programs' needs 'gram' before it")
            record(PROGRAMS, ours(small, "gram", "o_programs", cache=caches["programs"], program_cache=caches["gram"]))
        elif variant == "exact":
            record(EXACT, ours(small, "exact", "o_exact", cache=caches["exact"]))
        elif variant == "randomized":
            for (p, o), name in randomized.items():
                record(name, ours(small, "randomized", f"o_rand_p{p}_o{o}", setting=(p, o)))
        elif variant == "fleet":
            from crosslora_jax import synthetic

            source_config = json.loads((small["source"] / "config.json").read_text())
            folders = [small["a1"], small["a2"]]
            for k in range(2, args.fleet):  # more adapters of the same source, written once
                folder = small["a1"].parent / f"adapter{k + 1}"
                if not (folder / "adapter_config.json").exists():
                    synthetic.write_adapter(folder, source_config, seed=10 + k, roles=ROLES,
                                            rank=16, alpha=32, dtype="bfloat16")  # fmt: skip
                folders.append(folder)
            paths = {**small, "fleet": ",".join(str(f) for f in folders[: args.fleet])}
            record(f"ours, {args.fleet} adapters in one command (default engine, cold)",
                   ours(paths, "gram", "o_fleet", adapter="fleet"))  # fmt: skip
        elif variant == "depth":
            deep = make_inputs(work, args.pair, 2 * args.layers, args.weights)
            for paths, layers in ((small, args.layers), (deep, 2 * args.layers)):
                record(f"ours, randomized, chunk {args.depth_chunk}, {layers} layers",
                       ours(paths, "randomized", f"o_depth{layers}", chunk=args.depth_chunk), layers)  # fmt: skip
    compared = {GRAM: "o_gram", **{name: f"o_rand_p{p}_o{o}" for (p, o), name in randomized.items()}}
    for name, folder in compared.items():
        if name in rows and EXACT in rows:
            record(name, {**rows[name], "delta_vs_exact": delta_error(work / folder, work / "o_exact")})
    print(render(args, rows, layers_of, input_seconds))


def render(args: argparse.Namespace, rows: dict[str, dict], layers_of: dict[str, int], input_seconds: float) -> str:
    import jax

    device = jax.devices()[0]
    command = "python tools/bench_transfer.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--out"))
    lines = [
        f"`{command.strip()}`",
        "",
        f"{PAIRS[args.pair][0]}, {args.weights} weights, {args.layers} layers × 7 roles, LoRA rank 16, SVD rank {args.svd_rank}, "
        f"{args.chunk} layers per chunk; {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"JAX device: {getattr(device, 'device_kind', device.platform)}, jax {jax.__version__}; "
        f"page cache {'dropped before each row' if args.drop_caches else 'not dropped'}; "
        f"inputs written in {input_seconds:.0f} s (not counted).",
        "",
        f"Code at commit {COMMIT[0]}; CPU: {_cpu_model()}; load average at the end: "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| variant | wall s | s / layer | SVD s | project s | read s | peak RSS MB | SVDs fell back | "
        "vs faster baseline | ΔW_t vs exact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    walls = [rows[name]["wall"] for name in BASELINES.values() if name in rows]
    base = min(walls) if walls else None
    for name, r in rows.items():
        layers = layers_of[name]
        label = name
        if r.get("layers_timed", layers) < layers:
            label += f" — extrapolated from {r['layers_timed']} layer(s)"
        delta = r.get("delta_vs_exact")
        # A fleet row is compared with that many baseline runs (each the same work, no cache).
        ratio = f"{base * r.get('adapters', 1) / r['wall']:.1f}×" if base and layers == args.layers else "—"
        lines.append(
            f"| {label} | {r['wall']:.1f} | {r['wall'] / layers:.2f} | {r.get('svd_seconds', 0):.1f} | "
            f"{r.get('project_seconds', 0):.2f} | {r.get('read_seconds', 0):.1f} | {r['rss_mb']:.0f} | "
            f"{r.get('fallback_layers', '—')} | {ratio} | "
            f"{f'{delta[0]:.4f} (max {delta[1]:.4f})' if delta else '—'} |"
        )
    cold, warm = rows.get(GRAM), rows.get(WARM)
    if cold and warm:
        lines += ["", f"Warm cache: the second adapter took {100 * warm['wall'] / cold['wall']:.1f} % of the first "
                  f"({warm.get('computed_layers')} SVD layers computed, {warm.get('cached_layers')} read from the cache)."]  # fmt: skip
    return "\n".join(lines)


COMMIT = ["unknown"]


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
