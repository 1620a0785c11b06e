"""The calibration tool runs on small shapes: exact passes the check on every kind of spectrum."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_small_cases_print_one_line_each_and_exact_is_not_flagged() -> None:
    cases = "flat:96x160,power:96x160,power_slow:160x96,steep:96x96,rankdef:300x320"
    out = subprocess.run([sys.executable, "tools/svd_check_calibration.py", "--engines=exact,gram",
                          f"--cases={cases}", "--rank=16"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         check=True, capture_output=True, text=True, timeout=300).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 10
    for row in rows:
        assert not row["flagged"] and 0 <= row["residual_eps"] < row["flag_line_eps"], row
