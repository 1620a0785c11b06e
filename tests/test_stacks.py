"""The Python API for JAX code: stacks in, the ops under the caller's own jit, an adapter out."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from crosslora_jax import (
    AdapterError,
    SvdSettings,
    TransferOptions,
    load_lora_stacks,
    load_weight_stacks,
    save_lora_stacks,
    synthetic,
    transfer,
    transfer_stack,
    truncated_svd,
)


@pytest.mark.parametrize("target", ["qwen3", "phi3"])  # phi3: q, v read from and written into qkv_proj
def test_the_ops_inside_a_callers_jit_give_what_transfer_writes(tmp_path, target) -> None:
    # gate is tall (m > n): the pipeline hands gram Wᵀ and swaps U, V back; the ops here do not.
    src_cfg = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=3)
    tgt_cfg = synthetic.model_config(target, hidden=48, intermediate=80, heads=4, kv_heads=2, layers=3)
    src = synthetic.write_model(tmp_path / "src", src_cfg, synthetic.model_tensors(src_cfg, seed=0))
    tgt = synthetic.write_model(tmp_path / "tgt", tgt_cfg, synthetic.model_tensors(tgt_cfg, seed=1))
    adapter = synthetic.write_adapter(tmp_path / "lora", src_cfg, seed=2, roles=("q", "v", "gate", "down"), rank=4)
    settings = SvdSettings(rank=10)

    lora = load_lora_stacks(adapter, src)
    assert set(lora) == {"q", "v", "gate", "down"} and lora["q"].a.shape == (3, 4, 32) and lora["q"].layers == (0, 1, 2)
    w_s, w_t = load_weight_stacks(src), load_weight_stacks(tgt)
    assert w_t["v"].shape == (3, 2 * 12, 48)  # a fused module's role: its own rows

    @jax.jit
    def users_step(w_s, w_t, a, b):  # the user's own jitted computation
        ids = jax.numpy.arange(w_s.shape[0])
        s, t = truncated_svd(w_s, ids, settings), truncated_svd(w_t, ids, settings)
        return transfer_stack("cross_lora", a, b, s.u, s.v, t.u, t.v)

    out, phis = {}, {}
    for role, stack in lora.items():
        a_t, b_t, diag = users_step(w_s[role], w_t[role], stack.a, stack.b)
        out[role] = stack._replace(a=np.asarray(a_t), b=np.asarray(b_t))
        phis[role] = np.stack([np.asarray(diag.phi_u), np.asarray(diag.phi_v)], axis=1)
    save_lora_stacks(tmp_path / "mine", tgt, out, like=adapter)
    (report,) = transfer(src, tgt, [adapter], tmp_path / "cli", TransferOptions(svd=settings))
    for m in report.modules:  # each side's φ stays on its side (the pipeline poses tall roles transposed)
        np.testing.assert_allclose((m.figures.phi_u, m.figures.phi_v), phis[m.role][m.target_layer], atol=1e-4)
    mine, cli = (
        load_file(str(tmp_path / "mine/adapter_model.safetensors")),
        load_file(str(tmp_path / "cli/adapter_model.safetensors")),
    )
    assert mine.keys() == cli.keys()
    for key in mine:
        np.testing.assert_allclose(mine[key], cli[key], rtol=1e-4, atol=1e-4 * np.abs(cli[key]).max(), err_msg=key)


def test_mixed_ranks_in_one_role_are_refused_by_the_stack_loader(tmp_path) -> None:
    cfg = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2)
    src = synthetic.write_model(tmp_path / "src", cfg, synthetic.model_tensors(cfg, seed=0))
    adapter = synthetic.write_adapter(tmp_path / "lora", cfg, seed=1, roles=("q",), rank=4)
    # Rewrite layer 1 at rank 2 and say so in rank_pattern.
    import json

    from safetensors.numpy import save_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj"
    tensors[f"{key}.lora_A.weight"] = tensors[f"{key}.lora_A.weight"][:2]
    tensors[f"{key}.lora_B.weight"] = tensors[f"{key}.lora_B.weight"][:, :2]
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["rank_pattern"] = {"model.layers.1.self_attn.q_proj": 2}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="mixes LoRA ranks"):
        load_lora_stacks(adapter, src)
