"""The accuracy tool's quick mode runs end to end and prints a well-formed, finite table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_table(tmp_path) -> None:
    out = tmp_path / "table.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "tools/svd_accuracy.py", "--quick", f"--out={out}"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    rows = [line for line in out.read_text().splitlines() if line.startswith("| decay")]
    assert len(rows) == 2 * 2  # one spectrum × two pairs × two settings in quick mode
    for row in rows:
        cells = row.strip("|").split("|")
        numbers = [float(x) for cell in cells[4:] for x in re.findall(r"\d+\.\d+", cell)]
        assert numbers and all(x == x and x < 1e6 for x in numbers), row
    # More power iterations must not make the subspace worse (same seed and spectra).
    dist = [float(re.findall(r"\d+\.\d+", r.split("|")[6])[0]) for r in rows]
    assert dist[1] <= dist[0] and dist[3] <= dist[2]
