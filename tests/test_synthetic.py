"""Synthetic fixtures are built from the architecture table: for every row, transformers and PEFT
load the checkpoint and adapter with no missing or unexpected tensor, and agree with our model."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from crosslora_jax import synthetic
from crosslora_jax.arch import ARCHITECTURES, ROLES
from crosslora_jax.eval import load_model, logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_fixtures_of_every_row_load_in_transformers_and_peft(tmp_path, model_type) -> None:
    config = synthetic.model_config(model_type, hidden=32, intermediate=48, heads=4, kv_heads=2, layers=2, vocab=64)
    spectrum = synthetic.Spectrum(scale=4.0)  # weights that move the logits
    model_dir = synthetic.write_model(
        tmp_path / "m", config, synthetic.model_tensors(config, seed=0, spectrum=spectrum)
    )
    adapter = synthetic.write_adapter(tmp_path / "a", config, seed=1, roles=ROLES, rank=4, alpha=64)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation="eager", output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(model).__name__ == ARCHITECTURES[model_type].causal_lm
    lora = peft.PeftModel.from_pretrained(model.float(), adapter).eval()
    loaded = {k for k in lora.state_dict() if "lora_" in k}
    assert len(loaded) == len(load_file(str(adapter / "adapter_model.safetensors")))
    tokens = np.random.default_rng(2).integers(0, 64, (2, 9))
    with torch.no_grad():
        theirs = lora(torch.tensor(tokens)).logits.numpy()
    spec, params = load_model(model_dir, adapter)
    ours = np.asarray(logits(spec, params, tokens))
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
    _, base = load_model(model_dir)
    assert np.abs(np.asarray(logits(spec, base, tokens)) - ours).max() > 0.05 * scale  # the adapter matters
