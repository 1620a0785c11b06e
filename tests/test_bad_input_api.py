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
