"""What a default-verbosity run puts on stderr: nothing a user need not act on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bad_inputs import make_inputs

ROOT = Path(__file__).resolve().parents[2]


def transfer_stderr(tmp_path: Path, *extra: str) -> list[str]:
    """The tiny pair at the default --svd_rank=320: every role's weights are smaller than r."""
    p = make_inputs(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "crosslora_jax.transfer", f"--source_model={p['source']}",
         f"--target_model={p['target']}", f"--adapter={p['adapter']}", f"--output={p['output']}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert not [line for line in lines if "tpu" in line.lower()], result.stderr
    return lines


def ours(lines: list[str], levels: str) -> list[str]:
    """Log lines at `levels` (e.g. "WE") from our modules; jax may rightly warn about the machine
    (e.g. a GPU without a CUDA jaxlib), which is not ours to silence."""
    names = {f.name for f in (ROOT / "crosslora_jax").rglob("*.py")}
    return [line for line in lines if line[:1] in levels and line.split("] ")[0].split()[-1].split(":")[0] in names]


def test_default_verbosity_keeps_stderr_to_progress_and_what_to_act_on(tmp_path) -> None:
    lines = transfer_stderr(tmp_path)
    assert not [line for line in lines if "--svd_rank=320 exceeds" in line], lines  # the report has the ranks
    assert not ours(lines, "IWE"), lines  # progress only: nothing here to act on
    assert [line for line in lines if line.startswith("[")], lines


def test_info_verbosity_says_the_rank_cap_once_and_still_no_platform_probe(tmp_path) -> None:
    lines = transfer_stderr(tmp_path, "--verbosity=0")
    rank_lines = [line for line in lines if "--svd_rank=320 exceeds" in line]
    assert len(rank_lines) == 1 and rank_lines[0].startswith("I"), lines  # one INFO line, not per role
    assert not ours(lines, "WE"), lines
