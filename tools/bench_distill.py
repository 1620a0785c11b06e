"""Distillation throughput: teacher generation and training tokens/s, with their baselines in the same run.

    python tools/bench_distill.py                       # CPU: the "small" pair (~25M params each)
    python tools/bench_distill.py --pair=8b --dtype=bfloat16 --peak_tflops=989   # one GPU (H100 bf16 peak)
    python tools/bench_distill.py --pair=tiny           # seconds; tests/tools runs it

Random weights in the evaluator's canonical layout (speed does not depend on their values),
built on the device. Rows:

- generate (KV cache): `crosslora_jax.eval.generate`, the teacher (source + its LoRA) sampling
  `--gen_len` tokens for `--gen_batch` sequences; baseline: the same sampling by a full forward
  over the whole prefix for every new token (what a loop over `logits` does), jitted per length.
- train step: one `distill` training step (`--kd`, `--learn=lora`, every role, rank 16): teacher
  forward, student forward and backward (layers recomputed, as `distill --remat` does, unless
  `--no_remat`), AdamW update; tokens/s = batch × positions / step time.

Model FLOPs (MFU): 2·N·tokens per forward (N = the matmul parameters of a model, embeddings
excluded, attention scores included), backward ≈ 2× forward for the student; utilisation =
achieved / `--peak_tflops` (given: JAX cannot read a device's peak). Printed as a markdown table
with the command, device and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crosslora_jax import synthetic
from crosslora_jax.arch import ROLES, role_shapes
from crosslora_jax.distillation._student import Student
from crosslora_jax.distillation._train import Batch, Frozen, Loss, optimizer, train_step
from crosslora_jax.eval import generate, logits, model_spec
from crosslora_jax.io.hf_config import read_model_config
from crosslora_jax.io.stacks import LoraStack

PAIRS = {
    "tiny": (("llama", dict(hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2)),
             ("qwen2", dict(hidden=48, intermediate=80, heads=4, kv_heads=2, layers=2)), 256),
    "small": (("llama", dict(hidden=512, intermediate=1408, heads=8, kv_heads=4, layers=8)),
              ("qwen2", dict(hidden=640, intermediate=1792, heads=10, kv_heads=2, layers=8)), 8192),
    "8b": (("llama", dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=32)),
           ("llama", dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=32)), 128256),
}  # fmt: skip


def _spec_and_params(folder: Path, model_type: str, dims: dict, vocab: int, seed: int, dtype: str):
    config = synthetic.model_config(model_type, vocab=vocab, **dims)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    spec = model_spec(read_model_config(folder))
    key = jax.random.key(seed)
    shapes = role_shapes(config)
    dt = jnp.dtype(dtype)

    def rand(k: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return (jax.random.normal(k, shape, jnp.float32) / np.sqrt(shape[-1])).astype(dt)

    keys = iter(jax.random.split(key, 64))
    layers = {role: rand(next(keys), (spec.num_layers, *shapes[role])) for role in ROLES}
    for name in spec.norm_names:
        layers[name] = jnp.ones((spec.num_layers, spec.hidden), dt)
    params = {"embed": rand(next(keys), (vocab, spec.hidden)), "norm": jnp.ones((spec.hidden,), dt), "layers": layers}
    if spec.qk_norm:
        layers["q_norm"] = layers["k_norm"] = jnp.ones((spec.num_layers, spec.head_dim), dt)
    if not spec.tied:
        params["lm_head"] = rand(next(keys), (vocab, spec.hidden))
    return spec, params, shapes


def _lora(spec, shapes, rank: int, seed: int, zero_b: bool = False) -> dict:
    keys = iter(jax.random.split(jax.random.key(seed), 32))
    out = {}
    for role in ROLES:
        m, n = shapes[role]
        a = jax.random.normal(next(keys), (spec.num_layers, rank, n)) / np.sqrt(n)
        b = (
            jnp.zeros((spec.num_layers, m, rank))
            if zero_b
            else jax.random.normal(next(keys), (spec.num_layers, m, rank)) * 0.01
        )
        out[role] = LoraStack(a, b, jnp.full((spec.num_layers,), 2.0), tuple(range(spec.num_layers)))
    return out


def _matmul_params(spec, shapes) -> int:
    return spec.num_layers * sum(m * n for m, n in (shapes[r] for r in ROLES)) + spec.vocab * spec.hidden


def _timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm
    started = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="small")
    parser.add_argument("--dtype", default="float32", help="frozen weights' dtype (bfloat16 on accelerators)")
    parser.add_argument("--gen_batch", type=int, default=16)
    parser.add_argument("--gen_len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="training sequences per step")
    parser.add_argument("--seq", type=int, default=64, help="training positions per sequence")
    parser.add_argument("--kd", default="full", choices=["full", "delta"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_baseline", action="store_true", help="skip the re-forward generation baseline")
    parser.add_argument("--no_remat", action="store_true", help="keep every layer's activations (distill --noremat)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the device's peak, for MFU")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_distill"))
    args = parser.parse_args()
    (src_type, src_dims), (tgt_type, tgt_dims), vocab = PAIRS[args.pair]
    spec_s, params_s, shapes_s = _spec_and_params(args.work / "src", src_type, src_dims, vocab, 0, args.dtype)
    spec_t, params_t, shapes_t = _spec_and_params(args.work / "tgt", tgt_type, tgt_dims, vocab, 1, args.dtype)
    lora_s = _lora(spec_s, shapes_s, 16, 2)
    n_s, n_t = _matmul_params(spec_s, shapes_s), _matmul_params(spec_t, shapes_t)
    rows = []

    prompts = np.zeros((args.gen_batch, 1), np.int32)
    key = jax.random.key(0)
    gen = lambda: generate(spec_s, params_s, prompts, gen_len=args.gen_len, key=key, lora=lora_s)  # noqa: E731
    seconds = _timed(gen, args.repeats)
    tokens = args.gen_batch * args.gen_len
    rows.append(("generate, KV cache", tokens / seconds, 2 * n_s * tokens / seconds, seconds))
    if not args.no_baseline:
        step = jax.jit(lambda p, t: jnp.argmax(logits(spec_s, p, t, lora_s)[:, -1], -1))

        def reforward() -> jax.Array:
            seq = jnp.asarray(prompts)
            for _ in range(args.gen_len):
                seq = jnp.concatenate([seq, step(params_s, seq)[:, None].astype(jnp.int32)], axis=1)
            return seq

        base = _timed(reforward, 1)
        rows.append(("generate, full re-forward per token (baseline)", tokens / base, 2 * n_s * tokens / base, base))

    student = Student("lora", {r: {"a": x.a, "b": x.b} for r, x in _lora(spec_t, shapes_t, 16, 3, True).items()},
                      {r: {"scale": jnp.full((spec_t.num_layers,), 2.0)} for r in ROLES}, ())  # fmt: skip
    frozen = Frozen(params_t, params_s, lora_s, student.fixed)
    obj = Loss(args.kd, "lora", 0.0, spec_t, spec_s, remat=not args.no_remat)  # distill's default: remat
    opt = optimizer(100, 1e-3, 10, 0.0, 1.0)
    tokens_in = jax.random.randint(jax.random.key(1), (args.batch, args.seq), 0, vocab)
    batch = Batch(tokens_in, tokens_in, jnp.ones((args.batch, args.seq)))
    state = {"t": jax.tree.map(jnp.array, student.trainable), "o": opt.init(student.trainable)}

    def one_step() -> jax.Array:
        state["t"], state["o"], loss = train_step(obj, opt, state["t"], state["o"], frozen, batch, None)
        return loss

    seconds = _timed(one_step, args.repeats)
    tokens = args.batch * args.seq
    source_forwards, target_forwards = (2, 1) if args.kd == "delta" else (1, 0)  # frozen passes; student ≈ 3 forwards
    flops = 2 * tokens * (n_s * source_forwards + n_t * (3 + target_forwards))
    rows.append((f"train step ({args.kd} KD, LoRA r=16 on all roles)", tokens / seconds, flops / seconds, seconds))

    device = jax.devices()[0]
    print(f"command: python tools/bench_distill.py {' '.join(sys.argv[1:])}")
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, {platform.machine()}, "
          f"pair {args.pair}: source {n_s / 1e6:.1f}M, target {n_t / 1e6:.1f}M matmul params, {args.dtype}")  # fmt: skip
    print("\n| row | tokens/s | model TFLOP/s | MFU | seconds per call |\n|---|---|---|---|---|")
    for name, rate, flop_rate, secs in rows:
        mfu = "n/a" if args.peak_tflops is None else f"{100 * flop_rate / 1e12 / args.peak_tflops:.1f} %"
        print(f"| {name} | {rate:,.0f} | {flop_rate / 1e12:.4f} | {mfu} | {secs:.3f} |")
    if not args.no_baseline:
        print(f"\nKV-cache generation is {rows[0][1] / rows[1][1]:.1f}× the re-forward baseline (same run).")


if __name__ == "__main__":
    main()
