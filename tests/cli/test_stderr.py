"""What a default-verbosity run puts on stderr: nothing a user need not act on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bad_inputs import make_inputs

ROOT = Path(__file__).resolve().parents[2]


def test_no_platform_probe_and_no_per_role_rank_warning(tmp_path) -> None:
    """The tiny pair at the default --svd_rank=320: every role's weights are smaller than r."""
    p = make_inputs(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "crosslora_jax.transfer", f"--source_model={p['source']}",
         f"--target_model={p['target']}", f"--adapter={p['adapter']}", f"--output={p['output']}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert not [line for line in lines if "tpu" in line.lower()], result.stderr
    rank_lines = [line for line in lines if "--svd_rank=320 exceeds" in line]
    assert len(rank_lines) == 1 and rank_lines[0].startswith("I"), result.stderr  # one INFO line, not per role
    # Our warnings only: jax may rightly warn about the machine (e.g. a GPU without a CUDA jaxlib).
    ours = {f.name for f in (ROOT / "crosslora_jax").rglob("*.py")}
    warnings = [
        line for line in lines if line[:1] in ("W", "E") and line.split("] ")[0].split()[-1].split(":")[0] in ours
    ]
    assert not warnings, result.stderr
