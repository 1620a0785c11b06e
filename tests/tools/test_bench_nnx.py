"""The NNX prototype (tools/_nnx_model.py) is the functional model's math on every architecture row,
an `nnx.Optimizer` with `wrt=LoraParam` moves only the LoRA factors, and tools/bench_nnx.py runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crosslora_jax import synthetic
from crosslora_jax.arch import ARCHITECTURES, ROLES
from crosslora_jax.eval import init_cache, load_model, logits, logits_with_cache
from crosslora_jax.io.stacks import LoraStack

nnx = pytest.importorskip("flax.nnx")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from _nnx_model import CausalLM, LoraParam  # noqa: E402

VOCAB = 97
# Windows shorter than the sequence, softcaps that bite, qk-norm, biases, per-layer-type RoPE.
OVERRIDES = {
    "llama": dict(rope_theta=500.0, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    "mistral": dict(sliding_window=5),
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": dict(head_dim=8),
    "gemma2": dict(head_dim=16, sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    "gemma3_text": dict(
        head_dim=16,
        sliding_window=4,
        sliding_window_pattern=2,
        rope_local_base_freq=100.0,
        rope_scaling=dict(rope_type="linear", factor=4.0),
    ),
}


def _model(folder: Path, model_type: str) -> tuple:
    """A tiny model with non-trivial norms and biases, and a LoRA side path on every role."""
    config = synthetic.model_config(model_type, hidden=32, intermediate=48, heads=4, kv_heads=2, layers=3, vocab=VOCAB)
    config.update(OVERRIDES.get(model_type, {}))
    tensors = synthetic.model_tensors(config, seed=0, spectrum=synthetic.Spectrum(scale=3.0))
    rng = np.random.default_rng(1)
    centre = 0.0 if ARCHITECTURES[model_type].norm_offset else 1.0
    for name, value in tensors.items():
        noise = rng.standard_normal(value.shape).astype(np.float32)
        if "norm" in name:
            tensors[name] = centre + 0.3 * noise
        elif name.endswith(".bias"):
            tensors[name] = 0.3 * noise
        elif value.shape[0] == VOCAB:
            tensors[name] = noise
    spec, params = load_model(synthetic.write_model(folder, config, tensors))
    lora = {}
    for role in ROLES:
        layers, m, n = params["layers"][role].shape
        lora[role] = LoraStack(
            (rng.standard_normal((layers, 3, n)) / np.sqrt(n)).astype(np.float32),
            (0.5 * rng.standard_normal((layers, m, 3))).astype(np.float32),
            np.full((layers,), 1.5, np.float32),
            tuple(range(layers)),
        )
    return spec, params, lora


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_nnx_model_equals_functional(model_type, tmp_path) -> None:
    spec, params, lora = _model(tmp_path, model_type)
    tokens = np.random.default_rng(2).integers(0, VOCAB, (2, 12))
    model = CausalLM(spec, params, lora)
    want = jax.jit(lambda t: logits(spec, params, t, lora))(tokens)
    got = nnx.jit(lambda m, t: m(t)[0])(model, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)

    # The cache path: prefill 10 tokens, then one decode step; logits and the cache both agree.
    def cached(call):
        cache = init_cache(spec, 2, 16)
        _, cache = call(cache, tokens[:, :10])
        return call(cache, tokens[:, 10:11])

    want_z, want_cache = jax.jit(lambda: cached(lambda c, t: logits_with_cache(spec, params, c, t, lora)))()
    got_z, got_cache = nnx.jit(lambda m: cached(lambda c, t: m(t, c)))(model)
    np.testing.assert_allclose(np.asarray(got_z), np.asarray(want_z), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_cache.k), np.asarray(want_cache.k), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_z), np.asarray(want[:, 10:11]), rtol=1e-4, atol=1e-4)


def test_optimizer_moves_only_lora(tmp_path) -> None:
    spec, params, lora = _model(tmp_path, "llama")
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB, (2, 9)))
    model = CausalLM(spec, params, lora)
    before = {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model))}
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=LoraParam)

    @nnx.jit
    def step(m, opt):
        def loss(m):
            logp = jax.nn.log_softmax(m(tokens[:, :-1])[0], axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

        grads = nnx.grad(loss, argnums=nnx.DiffState(0, LoraParam))(m)
        opt.update(m, grads)

    step(model, optimizer)
    after = dict(nnx.to_flat_state(nnx.state(model)))
    lora_paths = {path for path, v in after.items() if isinstance(v, LoraParam)}
    assert len(lora_paths) == 2 * len(ROLES)
    for path, value in before.items():
        moved = not np.array_equal(np.asarray(after[path][...]), value)
        assert moved == (path in lora_paths), path


def test_bench_nnx_tiny() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "tools/bench_nnx.py", "--size=tiny", "--rounds=2", "--compile_rounds=1"]
    out = subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert [r.split("|")[1].strip() for r in rows] == ["forward", "decode", "train", "compile forward", "compile train"]
    assert "max |logits - functional's|" in out
