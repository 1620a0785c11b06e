"""Flax NNX vs the functional model: forward, decode step, LoRA training step and compile time, same run.

    python tools/bench_nnx.py                  # CPU: llama-shaped, hidden 512, 8 layers, vocab 8192, batch 8 × 64
    python tools/bench_nnx.py --size=tiny      # seconds; tests/tools runs it

Needs flax (`pip install flax`; in the test extra, not a dependency). The NNX model is the
prototype in tools/_nnx_model.py.

Variants, timed call by call in turn (so a shared machine's load falls on all of them alike), each
row the median of `--rounds` calls:

- functional: `crosslora_jax.eval.logits` / `logits_with_cache` under `jax.jit`; the training
  step takes gradients w.r.t. a dict of LoRA factors and applies optax itself.
- nnx.jit: the NNX model (`CausalLM`, LoRA factors as `LoraParam`) under `nnx.jit`; training with
  `nnx.Optimizer(model, tx, wrt=LoraParam)`.
- jax.jit + nnx.split/merge: the same NNX model and optimizer split into state outside the
  compiled call and merged inside it, returning only what changes (LoRA factors, optimizer state);
  plain `nnx.jit` returns every variable, frozen weights included.

Rows: forward (logits of batch × seq tokens), decode (one token per row over a KV cache holding
seq tokens), train (CE on the next token, LoRA rank 8 on all seven roles, AdamW after clipping),
and compile (first call after `jax.clear_caches()`: trace + compile + one run; forward and train).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _nnx_model import CausalLM, LoraParam
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crosslora_jax import synthetic
from crosslora_jax.arch import ROLES, role_shapes
from crosslora_jax.eval import init_cache, logits, logits_with_cache, model_spec
from crosslora_jax.io.hf_config import read_model_config
from crosslora_jax.io.stacks import LoraStack

SIZES = {
    "tiny": dict(hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2, vocab=256, batch=2, seq=8),
    "small": dict(hidden=512, intermediate=1408, heads=8, kv_heads=4, layers=8, vocab=8192, batch=8, seq=64),
}
RANK = 8


def _model(size: dict, folder: Path) -> tuple:
    """(spec, canonical params, LoRA side path) of a llama-shaped model with random weights."""
    dims = {k: size[k] for k in ("hidden", "intermediate", "heads", "kv_heads", "layers")}
    config = synthetic.model_config("llama", vocab=size["vocab"], **dims)
    (folder / "config.json").write_text(json.dumps(config))
    spec = model_spec(read_model_config(folder))
    shapes = role_shapes(config)
    keys = iter(jax.random.split(jax.random.key(0), 32))

    def rand(shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
        return scale * jax.random.normal(next(keys), shape) / np.sqrt(shape[-1])

    layers = {role: rand((spec.num_layers, *shapes[role])) for role in ROLES}
    layers.update({name: jnp.ones((spec.num_layers, spec.hidden)) for name in spec.norm_names})
    params = {"embed": rand((spec.vocab, spec.hidden)), "norm": jnp.ones((spec.hidden,)), "layers": layers}
    if not spec.tied:
        params["lm_head"] = rand((spec.vocab, spec.hidden))
    lora = {
        role: LoraStack(
            rand((spec.num_layers, RANK, shapes[role][1])),
            rand((spec.num_layers, shapes[role][0], RANK), 0.01),
            jnp.full((spec.num_layers,), 2.0),
            tuple(range(spec.num_layers)),
        )
        for role in ROLES
    }
    return spec, params, lora


def _ce(z: jax.Array, targets: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def _loss(m: CausalLM, t: jax.Array) -> jax.Array:
    return _ce(m(t[:, :-1])[0], t[:, 1:])


def _tx() -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))


def _functional(spec, params, lora, tokens, cache) -> dict[str, Callable[[], object]]:
    """Zero-argument calls of the functional model; the training state lives in `state`."""
    fixed = {r: x.scale for r, x in lora.items()}
    tx = _tx()
    forward = jax.jit(lambda p, t, lo: logits(spec, p, t, lo))
    decode = jax.jit(lambda p, c, t, lo: logits_with_cache(spec, p, c, t, lo))

    @jax.jit
    def train(trainable, opt_state, p, t):
        def loss(tr):
            return _ce(logits(spec, p, t[:, :-1], {r: lora[r]._replace(**tr[r], scale=fixed[r]) for r in tr}), t[:, 1:])

        value, grads = jax.value_and_grad(loss)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, value

    trainable = {r: {"a": x.a, "b": x.b} for r, x in lora.items()}
    state = {"t": trainable, "o": tx.init(trainable)}

    def step() -> jax.Array:
        state["t"], state["o"], value = train(state["t"], state["o"], params, tokens)
        return value

    one = tokens[:, :1]
    return {"forward": lambda: forward(params, tokens, lora), "decode": lambda: decode(params, cache, one, lora),
            "train": step}  # fmt: skip


def _nnx_jit(spec, params, lora, tokens, cache) -> dict[str, Callable[[], object]]:
    """Zero-argument calls of the NNX model under `nnx.jit` (its default: every variable's state
    goes back out of the compiled call, so the model object sees in-place updates)."""
    model = CausalLM(spec, params, lora)
    optimizer = nnx.Optimizer(model, _tx(), wrt=LoraParam)
    forward = nnx.jit(lambda m, t: m(t)[0])
    decode = nnx.jit(lambda m, c, t: m(t, c))

    @nnx.jit
    def train(m: CausalLM, opt: nnx.Optimizer, t: jax.Array) -> jax.Array:
        value, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, LoraParam))(m, t)
        opt.update(m, grads)
        return value

    one = tokens[:, :1]
    return {"forward": lambda: forward(model, tokens), "decode": lambda: decode(model, cache, one),
            "train": lambda: train(model, optimizer, tokens)}  # fmt: skip


def _nnx_split(spec, params, lora, tokens, cache) -> dict[str, Callable[[], object]]:
    """The same NNX model under plain `jax.jit`: `nnx.split` outside, `nnx.merge` inside, and only
    what changes (LoRA factors, optimizer state) returned."""
    model = CausalLM(spec, params, lora)
    optimizer = nnx.Optimizer(model, _tx(), wrt=LoraParam)
    graph, state = nnx.split(model)
    forward = jax.jit(lambda s, t: nnx.merge(graph, s)(t)[0])
    decode = jax.jit(lambda s, c, t: nnx.merge(graph, s)(t, c))
    moving = nnx.Any(LoraParam, nnx.OptState)
    both, frozen, live = nnx.split((model, optimizer), nnx.Not(moving), ...)

    @jax.jit
    def train(frozen: nnx.State, live: nnx.State, t: jax.Array) -> tuple[nnx.State, jax.Array]:
        m, opt = nnx.merge(both, frozen, live)
        value, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, LoraParam))(m, t)
        opt.update(m, grads)
        return nnx.state((m, opt), moving), value

    holder = {"live": live}

    def step() -> jax.Array:
        holder["live"], value = train(frozen, holder["live"], tokens)
        return value

    one = tokens[:, :1]
    return {"forward": lambda: forward(state, tokens), "decode": lambda: decode(state, cache, one), "train": step}


def _time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per variant and row (median)")
    parser.add_argument("--compile_rounds", type=int, default=3, help="first calls per variant after clear_caches")
    args = parser.parse_args()
    size = SIZES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        spec, params, lora = _model(size, Path(tmp))
    tokens = jax.random.randint(jax.random.key(1), (size["batch"], size["seq"]), 0, spec.vocab)
    cache = init_cache(spec, size["batch"], 2 * size["seq"])
    _, cache = jax.jit(lambda c: logits_with_cache(spec, params, c, tokens, lora))(cache)  # seq tokens cached

    makers = {
        "functional (jax.jit)": lambda: _functional(spec, params, lora, tokens, cache),
        "nnx.jit": lambda: _nnx_jit(spec, params, lora, tokens, cache),
        "jax.jit + nnx.split/merge": lambda: _nnx_split(spec, params, lora, tokens, cache),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.compile_rounds):  # fresh wrappers on empty caches: trace + compile + one run
        for name, make in makers.items():
            for row in ("forward", "train"):
                jax.clear_caches()
                times.setdefault((name, f"compile {row}"), []).append(_time(make()[row]))
    calls = {name: make() for name, make in makers.items()}
    # Same math in every variant: forward logits (before training moves the NNX model's LoRA in
    # place), and the loss after the same number of steps (below).
    ref = np.asarray(calls["functional (jax.jit)"]["forward"]())
    agree = {name: float(np.max(np.abs(np.asarray(fns["forward"]()) - ref))) for name, fns in calls.items()}
    for row in ("forward", "decode", "train"):
        for fns in calls.values():
            jax.block_until_ready(fns[row]())  # compile and warm
        for _ in range(args.rounds):
            for name, fns in calls.items():
                times.setdefault((name, row), []).append(_time(fns[row]))

    losses = {name: float(fns["train"]()) for name, fns in calls.items()}

    names = list(makers)
    base = names[0]
    spread = max(losses.values()) - min(losses.values())
    same = max(agree.values()) <= 1e-4 * max(1.0, float(np.max(np.abs(ref)))) and spread <= 1e-4 * abs(losses[base])

    import flax

    print(f"command: python tools/bench_nnx.py {' '.join(sys.argv[1:])}")
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, flax {flax.__version__}, "
          f"{platform.machine()}; llama-shaped, hidden {size['hidden']}, {size['layers']} layers, vocab {size['vocab']}, "
          f"batch {size['batch']} × {size['seq']}, LoRA r={RANK} on all roles, float32")  # fmt: skip
    print(
        "\n| row (median seconds) | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{n} / functional" for n in names[1:])
        + " |"
    )
    print("|---" * (2 * len(names)) + "|")
    for row in ("forward", "decode", "train", "compile forward", "compile train"):
        med = {n: statistics.median(times[(n, row)]) for n in names}
        print(f"| {row} | " + " | ".join(f"{med[n]:.4f}" for n in names) + " | "
              + " | ".join(f"{med[n] / med[base]:.3f}" for n in names[1:]) + " |")  # fmt: skip
    print("\nmax |logits - functional's|: " + ", ".join(f"{n} {agree[n]:.1e}" for n in names[1:]))
    print(f"loss in training step {args.rounds + 2}: " + ", ".join(f"{n} {losses[n]:.6f}" for n in names))
    if not same:
        sys.exit(f"the variants disagree beyond float32 rounding (vs {base}): not the same model")


if __name__ == "__main__":
    main()
