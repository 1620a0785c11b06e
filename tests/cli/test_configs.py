"""Every shipped flagfile parses with the transfer command's own flags."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from absl import flags

import crosslora_jax.cli.transfer  # noqa: F401 — defines the flags

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.flags"))
PAIRS = {"qwen2.5-1.5b", "llama-3.2-3b", "gemma-2-2b"}


def test_there_is_one_flagfile_per_paper_pair_and_direction() -> None:
    pairs = {tuple(p.stem.split("_to_")) for p in CONFIGS}
    assert pairs == {(s, t) for s in PAIRS for t in PAIRS if s != t}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_flagfile_parses(path: Path) -> None:
    args = flags.FLAGS.read_flags_from_files([f"--flagfile={path}"], force_gnu=False)
    seen = set()
    for arg in args:
        name, _, value = arg.removeprefix("--").partition("=")
        flag = copy.deepcopy(flags.FLAGS[name])  # KeyError for an unknown flag
        flag.parse(value)  # raises for a bad enum / number
        seen.add(name)
    assert {"source_model", "target_model", "adapter", "output", "method"} <= seen
