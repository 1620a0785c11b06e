"""tools/bench_distill.py runs end to end on the tiny pair and prints the rows it claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_distill_tiny_pair(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "tools/bench_distill.py", "--pair=tiny", "--repeats=1", "--gen_len=8", "--seq=16",
         "--kd=delta", f"--work={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| generate") or line.startswith("| train")]
    assert len(rows) == 3, result.stdout
    for row in rows:
        rate = float(row.split("|")[2].replace(",", ""))
        assert rate > 0, row
    assert re.search(r"KV-cache generation is [0-9.]+× the re-forward baseline", result.stdout)
    assert "command: python tools/bench_distill.py --pair=tiny" in result.stdout
