"""The forward pass's training modes: activation checkpointing (`remat`) gives the gradients of the
plain pass, and bfloat16 weights multiply in bfloat16 with float32 accumulation."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from crosslora_jax import synthetic
from crosslora_jax.eval import load_model, logits
from crosslora_jax.io.stacks import LoraStack

VOCAB = 64
ROLES = ("q", "k", "v", "o", "gate", "up", "down")
# Softcaps that bite and windows shorter than the sequence: every branch of the layer body runs.
OVERRIDES = {
    "llama": dict(attention_bias=True, tie_word_embeddings=False),
    "gemma2": dict(sliding_window=3, attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
}


def _model(tmp_path: Path, model_type: str, dtype: object = np.float32) -> tuple:
    config = synthetic.model_config(model_type, hidden=32, intermediate=48, heads=4, kv_heads=2, layers=3, vocab=VOCAB)
    config.update(OVERRIDES[model_type])
    tensors = synthetic.model_tensors(config, seed=0, spectrum=synthetic.Spectrum(scale=3.0))
    rng = np.random.default_rng(1)
    for name, value in tensors.items():
        if value.shape[0] == VOCAB:  # embeddings and head: logits of a few units
            tensors[name] = rng.standard_normal(value.shape).astype(np.float32)
    folder = tmp_path / model_type
    if not folder.exists():
        synthetic.write_model(folder, config, tensors)
    spec, params = load_model(folder, dtype=dtype)
    return spec, jax.tree.map(jnp.asarray, params)


def _lora(params: dict, seed: int = 2, rank: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for role in ROLES:
        layers, m, n = params["layers"][role].shape
        out[role] = LoraStack(
            jnp.asarray(rng.standard_normal((layers, rank, n)) / np.sqrt(n), jnp.float32),
            jnp.asarray(0.5 * rng.standard_normal((layers, m, rank)), jnp.float32),
            jnp.full((layers,), 1.5, jnp.float32),
            tuple(range(layers)),
        )
    return out


@pytest.mark.parametrize("model_type", sorted(OVERRIDES))
def test_remat_gives_the_same_loss_and_gradients(tmp_path: Path, model_type: str) -> None:
    spec, params = _model(tmp_path, model_type)
    lora = _lora(params)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB, (2, 7)), jnp.int32)
    weights = jnp.asarray(np.random.default_rng(4).standard_normal((2, 7, VOCAB)), jnp.float32)

    def loss(lora: dict, remat: bool) -> jax.Array:
        return jnp.sum(jnp.tanh(logits(spec, params, tokens, lora, remat=remat)) * weights)

    plain = jax.jit(jax.value_and_grad(lambda x: loss(x, False)))(lora)
    remat = jax.jit(jax.value_and_grad(lambda x: loss(x, True)))(lora)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(plain[1]), jax.tree.leaves(remat[1]), strict=True):
        want = np.asarray(want)
        assert np.abs(want).max() > 0, path  # every factor gets a gradient: the comparison is not vacuous
        # XLA fuses the recomputed layers differently: float32 round-off (measured: 1.6e-6 of the largest entry)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=str(path))

    # What the backward pass keeps of the forward's activations: with remat, each layer's input
    # [L, B, T, D] (the layer is recomputed from it) and the head's; without, every layer's
    # projections, attention weights and MLP activations.
    def activations_saved(remat: bool) -> int:
        listing = io.StringIO()  # one residual a line: "f32[3,2,7,32] output of scan from ..."
        with contextlib.redirect_stdout(listing):
            print_saved_residuals(lambda x: loss(x, remat), lora)
        shapes = re.findall(r"^\w+\[([\d,]*)\] output of", listing.getvalue(), re.MULTILINE)
        assert shapes, listing.getvalue()
        return sum(math.prod(int(d) for d in shape.split(",") if d) for shape in shapes)

    b, t = tokens.shape
    layer_inputs, head = (spec.num_layers + 1) * b * t * spec.hidden, 4 * b * t * VOCAB
    # measured: 3,651 (llama) and 5,443 (gemma2) with remat, 39,382 and 50,606 without; bound 10,752
    assert activations_saved(True) <= 2 * (layer_inputs + head) < activations_saved(False)


def _equations(jaxpr: object) -> list:
    """Every equation of a program, its sub-programs (the layer scan's body) included."""
    found = []
    for eqn in jaxpr.eqns:  # type: ignore[attr-defined]
        found.append(eqn)
        for value in eqn.params.values():
            for inner in value if isinstance(value, tuple) else (value,):
                inner = getattr(inner, "jaxpr", inner)  # a closed program's own program
                if hasattr(inner, "eqns"):
                    found.extend(_equations(inner))
    return found


def test_bfloat16_weights_multiply_in_bfloat16_and_accumulate_in_float32(tmp_path: Path) -> None:
    spec, narrow = _model(tmp_path, "llama", ml_dtypes.bfloat16)
    _, wide = _model(tmp_path, "llama")
    lora = _lora(wide)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB, (2, 7)), jnp.int32)
    program = jax.make_jaxpr(lambda p: logits(spec, p, tokens, lora))(narrow)
    equations = _equations(program.jaxpr)
    weight_dots = [
        e
        for e in equations
        if e.primitive.name == "dot_general" and any(v.aval.dtype == jnp.bfloat16 for v in e.invars)
    ]
    assert len(weight_dots) == len(ROLES) + 1, "each projection (in the layer scan) and the head"
    for eqn in weight_dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert eqn.params["preferred_element_type"] == jnp.float32 and eqn.outvars[0].aval.dtype == jnp.float32
    # No weight is widened: nothing converts a bfloat16 value of a weight's shape to float32.
    weight_shapes = {x.shape[1:] for x in jax.tree.leaves(narrow["layers"]) if x.ndim == 3}
    weight_shapes |= {narrow["embed"].shape, narrow["lm_head"].shape}
    widened = [
        e.invars[0].aval.shape
        for e in equations
        if e.primitive.name == "convert_element_type"
        and e.invars[0].aval.dtype == jnp.bfloat16
        and e.outvars[0].aval.dtype == jnp.float32
    ]
    assert widened and not set(widened) & weight_shapes, widened  # embedding rows are widened, weights are not
    # Values: the same bfloat16-rounded weights held in float32 give the logits up to the rounding
    # of each matmul's input (relative 2^-8 per layer, a few layers deep).
    rounded = jax.tree.map(lambda x: x.astype(jnp.float32), narrow)
    got = np.asarray(logits(spec, narrow, tokens, lora))
    want = np.asarray(logits(spec, rounded, tokens, lora))
    assert got.dtype == np.float32
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    np.testing.assert_allclose(got, want, atol=4 * eps * np.abs(want).max())  # measured: 1.4 eps
    assert not np.array_equal(got, want)  # the bfloat16 path ran
    # And the rounded weights stay within bfloat16 round-off of the float32 model's logits.
    full = np.asarray(logits(spec, wide, tokens, lora))
    np.testing.assert_allclose(got, full, atol=8 * eps * np.abs(full).max())  # measured: 2.1 eps
