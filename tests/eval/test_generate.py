"""KV-cache generation against the full forward pass (`logits`, itself checked against
transformers in test_model_vs_transformers.py), for every architecture row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from _xla_env import xla_flags

from crosslora_jax import synthetic
from crosslora_jax._errors import OptionsError
from crosslora_jax.arch import ARCHITECTURES
from crosslora_jax.eval import generate, init_cache, load_model, logits, logits_with_cache
from crosslora_jax.io.stacks import LoraStack

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 97
PROMPT, GEN = 5, 9  # 14 tokens: longer than every sliding window below

# Per architecture: config overrides that exercise its particular math (windows shorter than the
# sequence, softcaps that bite, qk-norm, per-layer-type RoPE). Rows not listed run as the fixture.
OVERRIDES = {
    "llama": dict(rope_theta=500.0, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    "mistral": dict(sliding_window=5),
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": dict(head_dim=8),
    "gemma": dict(head_dim=16),
    "gemma2": dict(
        head_dim=16, query_pre_attn_scalar=12, sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=3.0
    ),
    "gemma3_text": dict(
        head_dim=16,
        query_pre_attn_scalar=12,
        sliding_window=4,
        sliding_window_pattern=2,
        rope_theta=5000.0,
        rope_local_base_freq=100.0,
        rope_scaling=dict(rope_type="linear", factor=4.0),
        final_logit_softcapping=3.0,
    ),
}


def _write(folder: Path, model_type: str, seed: int = 0) -> Path:
    """A tiny model whose attention, norms, biases and softcaps all matter (synthetic weights are
    near-identity in effect: unit norms, zero biases, 0.02-scale embeddings)."""
    config = synthetic.model_config(model_type, hidden=32, intermediate=48, heads=4, kv_heads=2, layers=3, vocab=VOCAB)
    config.update(OVERRIDES.get(model_type, {}))
    tensors = synthetic.model_tensors(config, seed=seed, spectrum=synthetic.Spectrum(scale=3.0))
    rng = np.random.default_rng(seed + 1)
    centre = 0.0 if ARCHITECTURES[model_type].norm_offset else 1.0
    for name, value in tensors.items():
        noise = rng.standard_normal(value.shape).astype(np.float32)
        if "norm" in name:
            tensors[name] = centre + 0.3 * noise
        elif name.endswith(".bias"):
            tensors[name] = 0.3 * noise
        elif value.shape[0] == VOCAB:  # embeddings and head: logits of a few units
            tensors[name] = noise
    return synthetic.write_model(folder, config, tensors)


def _lora(params: dict, seed: int, rank: int = 3) -> dict:
    """A LoRA side path on every role: role -> LoraStack (a [L, k, n], b [L, m, k], scale [L])."""
    rng = np.random.default_rng(seed)
    out = {}
    for role in ("q", "k", "v", "o", "gate", "up", "down"):
        layers, m, n = params["layers"][role].shape
        out[role] = LoraStack(
            (rng.standard_normal((layers, rank, n)) / np.sqrt(n)).astype(np.float32),
            (0.5 * rng.standard_normal((layers, m, rank))).astype(np.float32),
            np.full((layers,), 1.5, np.float32),
            tuple(range(layers)),
        )
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """model_type -> (folder, spec, params), built on first use."""
    root = tmp_path_factory.mktemp("models")
    built: dict[str, tuple] = {}

    def get(model_type: str) -> tuple:
        if model_type not in built:
            folder = _write(root / model_type, model_type)
            built[model_type] = (folder, *load_model(folder))
        return built[model_type]

    return get


def _prompts(batch: int = 3, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, PROMPT)).astype(np.int32)


def _assert_close(ours, reference) -> None:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    scale = np.abs(reference).max()
    assert scale > 1e-1  # a degenerate model would match trivially
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("with_lora", [False, True], ids=["base", "lora"])
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_decode_logits_equal_the_full_forward(models, model_type, with_lora):
    """Each drawn token's logits from the cache equal `logits` of the finished sequence there."""
    _, spec, params = models(model_type)
    lora = _lora(params, seed=11) if with_lora else None
    tokens, step_logits = generate(
        spec, params, _prompts(), gen_len=GEN, key=jax.random.key(0), lora=lora, return_logits=True
    )
    assert tokens.shape == (3, PROMPT + GEN) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:, :PROMPT], _prompts())
    full = logits(spec, params, tokens[:, :-1], lora)  # position t predicts token t+1
    _assert_close(step_logits, full[:, PROMPT - 1 :])
    if with_lora:  # the side path really is on: it moves logits by a sizeable fraction of their size
        base = logits(spec, params, tokens[:, :-1])
        assert np.abs(np.asarray(base) - np.asarray(full)).max() > 0.1 * np.abs(np.asarray(full)).max()


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_greedy_equals_repeated_full_forward(models, model_type):
    _, spec, params = models(model_type)
    lora = _lora(params, seed=12)
    ours = np.asarray(generate(spec, params, _prompts(), gen_len=GEN, key=jax.random.key(0), temperature=0, lora=lora))
    forward = jax.jit(logits, static_argnums=0)
    buffer = np.zeros((3, PROMPT + GEN), np.int32)  # right padding does not reach back: attention is causal
    buffer[:, :PROMPT] = _prompts()
    for t in range(PROMPT, PROMPT + GEN):
        buffer[:, t] = np.argmax(np.asarray(forward(spec, params, buffer, lora))[:, t - 1], axis=-1)
    np.testing.assert_array_equal(ours, buffer)


def test_cache_extends_by_chunks_like_the_full_forward(models):
    """Prefill, a 4-token chunk, then single tokens: every chunk's logits equal the full forward's,
    past gemma3's window and across its local/global layers."""
    _, spec, params = models("gemma3_text")
    lora = _lora(params, seed=13)
    tokens = np.random.default_rng(3).integers(0, VOCAB, (2, 13)).astype(np.int32)
    full = logits(spec, params, tokens, lora)
    cache = init_cache(spec, 2, 16)  # more slots than tokens: the empty tail is masked out
    step = jax.jit(logits_with_cache, static_argnums=0)
    start = 0
    for stop in (5, 9, 10, 11, 12, 13):
        out, cache = step(spec, params, cache, tokens[:, start:stop], lora)
        assert int(cache.length) == stop
        _assert_close(out, full[:, start:stop])
        start = stop


def test_same_key_same_tokens_and_tiny_top_p_is_greedy(models):
    _, spec, params = models("gemma2")
    kwargs = dict(gen_len=GEN, temperature=1.0)
    a = generate(spec, params, _prompts(), key=jax.random.key(5), **kwargs)
    b = generate(spec, params, _prompts(), key=jax.random.key(5), **kwargs)
    c = generate(spec, params, _prompts(), key=jax.random.key(6), **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = generate(spec, params, _prompts(), gen_len=GEN, key=jax.random.key(0), temperature=0)
    assert not np.array_equal(a, greedy)  # sampling at temperature 1 does differ from greedy here
    nucleus_of_one = generate(spec, params, _prompts(), key=jax.random.key(5), top_p=1e-6, **kwargs)
    np.testing.assert_array_equal(nucleus_of_one, greedy)


def _nucleus_probs(z: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """float64 reference: softmax(z / T) on the smallest top set whose mass reaches top_p, renormalised."""
    p = np.exp((z - z.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    above = np.cumsum(p[order]) - p[order]
    keep = np.zeros_like(p, bool)
    keep[order[above < top_p]] = True
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def test_samples_follow_temperature_and_top_p(models):
    """4000 rows of one prompt, one step: the tokens' frequencies match the float64 tempered nucleus
    distribution of the returned logits, and no token outside the nucleus is ever drawn."""
    _, spec, params = models("llama")
    rows, temperature, top_p = 4000, 3.0, 0.7
    prompts = np.repeat(_prompts(1), rows, axis=0)
    tokens, step_logits = generate(
        spec,
        params,
        prompts,
        gen_len=1,
        key=jax.random.key(9),
        temperature=temperature,
        top_p=top_p,
        return_logits=True,
    )
    expected = _nucleus_probs(np.asarray(step_logits[0, 0], np.float64), temperature, top_p)
    assert 5 <= np.count_nonzero(expected) < VOCAB // 2  # the nucleus cuts, and leaves a real choice
    counts = np.bincount(np.asarray(tokens[:, -1]), minlength=VOCAB)
    assert counts[expected == 0].sum() == 0
    total_variation = 0.5 * np.abs(counts / rows - expected).sum()
    assert total_variation < 0.06  # sampling noise at 4000 draws over ~12 tokens is ~0.02


def test_eight_devices_give_the_same_tokens_as_one(models, tmp_path):
    """The batch (12 rows: padded to 16) sharded over an 8-device 'data' mesh, LoRA on, sampling
    with top-p: the same tokens and the same logits as on one device."""
    folder, spec, params = models("gemma2")
    lora = _lora(params, seed=14)
    np.savez(tmp_path / "lora.npz", **{f"{r}.{x}": getattr(f, x) for r, f in lora.items() for x in ("a", "b", "scale")})
    prompts = _prompts(12, seed=8)
    np.save(tmp_path / "prompts.npy", prompts)
    kwargs = dict(gen_len=GEN, temperature=0.9, top_p=0.9)
    one, one_logits = generate(spec, params, prompts, key=jax.random.key(4), lora=lora, return_logits=True, **kwargs)
    code = f"""
import jax, numpy as np
from jax.sharding import Mesh
from crosslora_jax import LoraStack
from crosslora_jax.eval import generate, load_model
assert jax.device_count() == 8, jax.devices()
spec, params = load_model({str(folder)!r})
flat = np.load({str(tmp_path / "lora.npz")!r})
roles = sorted({{name.split(".")[0] for name in flat.files}})
lora = {{r: LoraStack(flat[r + ".a"], flat[r + ".b"], flat[r + ".scale"], tuple(range(flat[r + ".a"].shape[0])))
        for r in roles}}
mesh = Mesh(np.asarray(jax.devices()), ("data",))
tokens, step_logits = generate(spec, params, np.load({str(tmp_path / "prompts.npy")!r}), key=jax.random.key(4),
                               lora=lora, mesh=mesh, return_logits=True, **{kwargs!r})
assert len(tokens.sharding.device_set) == 8, tokens.sharding
np.save({str(tmp_path / "tokens.npy")!r}, np.asarray(tokens))
np.save({str(tmp_path / "logits.npy")!r}, np.asarray(step_logits))
"""
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8"), "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "tokens.npy"), one)
    _assert_close(np.load(tmp_path / "logits.npy"), one_logits)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(gen_len=0), r"^gen_len:"),
        (dict(gen_len=2.0), r"^gen_len:"),
        (dict(gen_len=512 - PROMPT + 1), r"^gen_len: .*positions"),  # the fixture's max_position_embeddings is 512
        (dict(temperature=-0.1), r"^temperature:"),
        (dict(temperature=float("nan")), r"^temperature:"),
        (dict(top_p=0.0), r"^top_p:"),
        (dict(top_p=1.5), r"^top_p:"),
        (dict(prompts=np.zeros((4,), np.int32)), "prompts"),
        (dict(prompts=np.zeros((2, 0), np.int32)), "prompts"),
        (dict(prompts=np.full((2, 3), VOCAB, np.int32)), "prompts"),
        (dict(prompts=np.full((2, 3), 1.0)), "prompts"),
    ],
)
def test_bad_arguments_are_refused_by_name(models, kwargs, named):
    _, spec, params = models("llama")
    arguments = {"prompts": _prompts(), "gen_len": 2, "key": jax.random.key(0), **kwargs}
    with pytest.raises(OptionsError, match=named):
        generate(spec, params, arguments.pop("prompts"), **arguments)


def test_every_override_names_a_row():
    assert set(OVERRIDES) <= set(ARCHITECTURES)  # a renamed row would silently lose its overrides
