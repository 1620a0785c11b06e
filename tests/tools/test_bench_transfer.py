"""The benchmark and SVD-timing tools run end to end on tiny shapes and report what they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)


def test_bench_transfer_tiny_pair(tmp_path) -> None:
    out = tmp_path / "table.md"
    # oversample covers the whole width, so the randomized engine must agree with the exact one.
    # A second setting with no oversampling and no power iterations must show a visible error.
    _run(["tools/bench_transfer.py", "--pair=tiny", "--layers=1", "--svd_rank=16", "--randomized=2:200,0:0",
          "--variants=gram,warm,programs,exact,randomized,baseline,torch_baseline,depth", f"--work={tmp_path / 'w'}",
          f"--out={out}"])  # fmt: skip
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ours") or
            line.startswith("| baseline")}  # fmt: skip
    assert len(rows) == 10, text

    def cell(name: str, column: int) -> str:
        return rows[name].split("|")[column].strip()

    def error(name: str) -> float:
        return float(re.findall(r"(\d+\.\d+) \(max", rows[name])[0])

    assert error("ours, randomized SVD (p=2, oversample=200)") < 1e-4, text
    assert error("ours, randomized SVD (p=0, oversample=0)") > 1e-3, text
    # The tiny spectra have no gap at r = 16: float32 engines agree to ~1e-4 there, not to eps.
    assert error("ours, gram SVD (default; 1st adapter, fills cache)") < 1e-3, text
    assert "0 SVD layers computed, 14 read from the cache" in text
    # Ratios are against the faster baseline: that row reads 1.0×, the other at most that.
    numpy_base, torch_base = "baseline (reference-style, NumPy SVD)", "baseline (reference-style, torch SVD)"
    ratios = sorted(float(cell(name, 9).rstrip("×")) for name in (numpy_base, torch_base))
    assert ratios[1] == 1.0 and ratios[0] <= 1.0, text
    assert "Code at commit" in text and "CPU:" in text
    assert cell("ours, gram SVD (default; 1st adapter, fills cache)", 8) == "0"  # no SVD fell back
    for folder in ("o_gram", "o_exact", "o_baseline", "o_torch_baseline"):
        assert (tmp_path / "w" / folder / "adapter_model.safetensors").exists(), folder
    # The programs row computes every subspace again (its own cache) with the gram row's XLA programs.
    work = tmp_path / "w"
    assert any((work / "cache" / "xla").iterdir()) and not (work / "cache_programs" / "xla").exists()
    assert len([p for p in (work / "cache_programs").rglob("layer_*") if p.is_dir()]) == 14
    again, first = ((work / f / "adapter_model.safetensors").read_bytes() for f in ("o_programs", "o_gram"))
    assert again == first  # the same programs, loaded instead of compiled, give the same file


def test_bench_transfer_flat_weights_and_fleet_row(tmp_path) -> None:
    """--weights=flat writes flat-bulk checkpoints; the fleet row moves --fleet adapters in one
    command and is compared with that many baseline runs."""
    out = tmp_path / "table.md"
    _run(["tools/bench_transfer.py", "--pair=tiny", "--layers=1", "--svd_rank=16", "--weights=flat", "--fleet=3",
          "--variants=torch_baseline,fleet", f"--work={tmp_path / 'w'}", f"--out={out}"])  # fmt: skip
    text = out.read_text()
    assert "flat weights" in text and (tmp_path / "w" / "tiny-L1-flat" / "adapter3").is_dir()
    row = next(line for line in text.splitlines() if line.startswith("| ours, 3 adapters in one command"))
    base = next(line for line in text.splitlines() if line.startswith("| baseline (reference-style, torch SVD)"))
    ratio, wall, base_wall = (
        float(row.split("|")[9].strip().rstrip("×")),
        float(row.split("|")[2]),
        float(base.split("|")[2]),
    )
    assert ratio == pytest.approx(3 * base_wall / wall, rel=0.06, abs=0.06), text  # printed to 0.1
    assert len(list((tmp_path / "w" / "o_fleet").glob("*/adapter_model.safetensors"))) == 3


def test_svd_timing_tiny(tmp_path) -> None:
    out = tmp_path / "t.md"
    _run(["tools/svd_timing.py", "--shapes=tiny", "--layers=2", "--rank=24", "--repeats=1", f"--out={out}"])
    table = [line for line in out.read_text().splitlines() if line.startswith("|")]
    assert {line.count("|") for line in table} == {6}, table  # every row fills the five columns
    rows = [line for line in table if line.startswith("| q 96×96")]
    assert any("truncated_svd exact" in r for r in rows)
    gram = next(r for r in rows if "eigh of Gram" in r)
    assert float(gram.split("|")[-2]) < 1e-2  # well-separated top of the spectrum: Gram is accurate
    engine = next(r for r in rows if "truncated_svd gram" in r)
    assert float(engine.split("|")[-2]) < 1e-2  # the gram engine agrees with exact
    floor = next(r for r in rows if "Gram product only" in r)
    assert float(floor.split("|")[3]) > 0


def test_svd_timing_projection_only_tiny(tmp_path) -> None:
    out = tmp_path / "p.md"
    _run(["tools/svd_timing.py", "--shapes=tiny", "--layers=1", "--rank=24", "--repeats=1", "--projection_only",
          f"--out={out}"])  # fmt: skip
    rows = [line for line in out.read_text().splitlines() if line.startswith("| gate")]
    assert len(rows) == 3 and all(float(r.split("|")[3]) > 0 for r in rows), rows
