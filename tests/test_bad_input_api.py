"""Every class of bad input raises its own CrossLoraError subclass, naming the file (library API)."""

from __future__ import annotations

import errno

import pytest
from _bad_inputs import CASES, make_inputs

from crosslora_jax import (
    AdapterError,
    Checkpoint,
    CheckpointError,
    OptionsError,
    OutputError,
    SvdSettings,
    TransferOptions,
    transfer,
)
from crosslora_jax.io import peft_adapter


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_a_clean_error(tmp_path, case) -> None:
    spoil, error, text, names = CASES[case]
    paths = make_inputs(tmp_path)
    spoil(paths)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error) as info:
        transfer(paths["source"], paths["target"], [paths["adapter"]], paths["output"],
                 TransferOptions(svd=SvdSettings(rank=8)))  # fmt: skip
    message = str(info.value)
    assert "\n" not in message and text in message and names in message, message
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == before, "a failed run must leave nothing behind"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="nope"),
        dict(min_similarity=1.5),
        dict(layers_per_chunk=0),
        dict(layer_map="zigzag"),
        dict(output_dtype="int8"),
    ],
)
def test_contradictory_or_out_of_range_options(kwargs) -> None:
    with pytest.raises(OptionsError):
        TransferOptions(**kwargs)


def test_disk_full_while_writing_leaves_no_output(tmp_path, monkeypatch) -> None:
    paths = make_inputs(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft_adapter, "save_file", full)
    with pytest.raises(OutputError, match="No space left"):
        transfer(paths["source"], paths["target"], [paths["adapter"]], paths["output"],
                 TransferOptions(svd=SvdSettings(rank=8)))  # fmt: skip
    assert not paths["output"].exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_a_pickle_is_never_opened(tmp_path) -> None:
    """Malicious pickles beside the configs would create a file if anything unpickled them."""
    import pickle

    paths = make_inputs(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (paths["source"] / "model.safetensors").unlink()
    (paths["source"] / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a pickle file and is never loaded"):
        Checkpoint(paths["source"])
    (paths["adapter"] / "adapter_model.safetensors").unlink()
    (paths["adapter"] / "adapter_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(AdapterError, match="pickle file, which crosslora_jax never loads"):
        transfer(paths["source"], paths["target"], [paths["adapter"]], paths["output"])
    assert not marker.exists()


def test_recoverable_problems_are_warnings_and_the_adapter_is_written(tmp_path, caplog) -> None:
    """Gate skips, index-map skips, svd_rank above a dimension and low energy: warn, still write."""
    import json

    import numpy as np

    from crosslora_jax import TransferError, synthetic

    cfg = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2)
    deeper = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=3)
    src_t = synthetic.model_tensors(cfg, seed=0)
    tgt_t = synthetic.model_tensors(deeper, seed=1)
    for name in src_t:  # target layer 0 = source layer 0 (similar); layer 1 independent (chance level)
        if name.startswith("model.layers.0."):
            tgt_t[name] = src_t[name]
    src = synthetic.write_model(tmp_path / "src", cfg, src_t)
    tgt = synthetic.write_model(tmp_path / "tgt", deeper, tgt_t)
    adapter = synthetic.write_adapter(tmp_path / "lora", cfg, seed=2, roles=("q", "v"))
    options = TransferOptions(svd=SvdSettings(rank=20), layer_map="index", min_similarity=0.9, energy_warning=1.01)
    with caplog.at_level("INFO"):
        (report,) = transfer(src, tgt, [adapter], tmp_path / "out", options)
    text = caplog.text
    assert "no source layer under the index layer map" in text
    # Expected on small models, so information, not a warning; the report has each svd_rank.
    (capped,) = [r for r in caplog.records if "--svd_rank=20 exceeds a weight dimension in roles v;" in r.message]
    assert capped.levelname == "INFO"
    assert "skipped by --min_similarity=0.9" in text
    assert "keeps under 101% of the weight energy" in text
    by = {m["module"]: m for m in report["modules"]}
    assert by["model.layers.0.self_attn.q_proj"]["status"] == "transferred"
    assert by["model.layers.1.self_attn.q_proj"]["skipped_by"] == "gate"
    assert by["model.layers.2.self_attn.q_proj"]["skipped_by"] == "layer_map"
    written = json.loads((tmp_path / "out/adapter_config.json").read_text())
    assert written["layers_to_transform"] == [0]
    # Gating everything is an error, not an empty adapter. An independent target at rank 4 puts every
    # φ near its chance level r/p ≤ 0.25, far below the gate (φ of equal layers can round to ≥ 1, so a
    # gate of 1 would sit on the edge).
    indep = synthetic.write_model(tmp_path / "indep", cfg, synthetic.model_tensors(cfg, seed=3))
    with pytest.raises(TransferError, match="no module was transferred"):
        transfer(src, indep, [adapter], tmp_path / "out2", TransferOptions(svd=SvdSettings(rank=4), min_similarity=0.9))
    assert not (tmp_path / "out2").exists()
    assert np.isfinite(by["model.layers.1.self_attn.q_proj"]["phi_u"])


@pytest.mark.parametrize("spoil", ["kv_heads", "nan_in_v_rows"])
def test_a_spoiled_fused_target_is_refused_naming_the_fused_tensor(tmp_path, spoil) -> None:
    """phi3 target: a qkv_proj whose rows disagree with config.json, or NaN in the v rows only."""
    import json

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from crosslora_jax import synthetic

    paths = make_inputs(tmp_path)
    phi3 = synthetic.model_config("phi3", hidden=32, intermediate=48, heads=4, kv_heads=2, layers=2)
    target = synthetic.write_model(tmp_path / "phi3", phi3, synthetic.model_tensors(phi3, seed=1))
    name = "model.layers.1.self_attn.qkv_proj.weight"
    if spoil == "kv_heads":  # q 32 + k, v 8 each implied; 32 + 16 + 16 stored
        (target / "config.json").write_text(json.dumps({**phi3, "num_key_value_heads": 1}))
        text = "'model.layers.0.self_attn.qkv_proj.weight' has shape [64, 32] but config.json implies [48, 32]"
    else:
        tensors = load_file(str(target / "model.safetensors"))
        tensors[name][50] = np.nan  # a v row (48..63)
        save_file(tensors, str(target / "model.safetensors"))
        text = f"{name!r} contains NaN or Inf"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError) as info:
        transfer(paths["source"], target, [paths["adapter"]], paths["output"], TransferOptions(svd=SvdSettings(rank=8)))
    assert text in str(info.value) and "model.safetensors" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
