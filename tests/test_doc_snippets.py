"""Every code snippet in README.md and docs/*.md runs as written, on the tiny models.

Snippets name `Qwen2.5-1.5B/`, `Llama-3.2-3B/`, `my_lora/`, ...: each runs in a copy of the
session's tiny workspace (tests/_tiny.py), where folders of those names hold tiny models, so only
what the paths hold differs. Python blocks are executed in-process; shell blocks (fenced `sh`, or
indented blocks that start with a command) with bash from the snippet's folder, the test's Python
first on PATH. ```text blocks are synopses (they must hold a placeholder such as DIR or `[`).

Not run here, each for the reason written beside it in EXEMPT (a snippet matched by no rule
must run, and a rule that matches nothing fails, so this list stays true). Shell snippets start
the commands as subprocesses, so they are in the marked suite (SLOW), as the commands' other
subprocess tests are; OWN_TEST snippets are run by a test that also checks what they wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from _tiny import ADAPTER, SOURCE, TARGET
from safetensors.numpy import load_file

import crosslora_jax as cl

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(python3?|pip|PYTHONPATH=|HYPOTHESIS_PROFILE=|cd|bash|crosslora-|tools/|\./)")
PLACEHOLDER = re.compile(r"DIR|FILE|\[|\.\.\.|HOST")

# (file, regex on the snippet's text) → why it is not run here.
EXEMPT: dict[tuple[str, str], str] = {
    ("README.md", r"python3 -m venv \.venv"): (
        "the set-up commands make a virtualenv and install; .ci/run runs the test command verbatim on "
        "a clean clone (test_ci_runs_the_readme_test_commands_verbatim) and tests/cli/test_cli_ux.py runs the demo"
    ),
    ("README.md", r"HYPOTHESIS_PROFILE=full python -m pytest"): (
        "the marked suite itself; .ci/run runs it verbatim (test_ci_runs_the_readme_test_commands_verbatim)"
    ),
    **{
        (doc, r"(^|\s|/)(bench_\w+|svd_timing|svd_accuracy|svd_check_calibration|replication)\.py|gpu_8b\.sh"): (
            "a benchmark or the replication: minutes to hours at the documented sizes; each tool's "
            "quick/smoke mode runs end to end in tests/tools/"
        )
        for doc in ("docs/benchmark.md", "docs/replication.md", "docs/svd_accuracy.md")
    },
}
# Snippets that run in the marked suite (`-m slow`), as the commands' other subprocess tests do
# (tests/_suites.py): each command pays an interpreter and a JAX start before its work.
SLOW = {
    ("README.md", "python -m crosslora_jax.transfer"): "a transfer and two evaluations through the commands",
    ("README.md", "python -m crosslora_jax.distill"): "a default distillation (early stopping) by the command",
    ("docs/usage.md", "--adapter=my_other_lora/"): "two adapters and a cache folder through the command",
    ("docs/usage.md", "--plot"): "a transfer with its plot through the command",
    ("docs/usage.md", "--task=my_text.txt"): "the evaluate command on a text file",
}
# Snippets a test of their own runs, and checks what they wrote.
OWN_TEST = {("README.md", "cl.load_weight_stacks"): "test_the_jax_snippet_writes_every_target_layer_as_transfer_does"}


@dataclass(frozen=True)
class Snippet:
    doc: str  # path relative to the repository root
    line: int
    kind: str  # "python" | "sh" | "text"
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def snippets() -> list[Snippet]:
    out = []
    for path in DOCS:
        lines, doc = path.read_text().splitlines(), str(path.relative_to(ROOT))
        i = 0
        while i < len(lines):
            fence = re.match(r"^```(\w*)\s*$", lines[i])
            if fence:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
                kind = {"bash": "sh", "shell": "sh", "console": "sh"}.get(fence[1], fence[1])
                out.append(Snippet(doc, i + 1, kind, "\n".join(lines[i + 1 : end]) + "\n"))
                i = end + 1
                continue
            # An indented code block: after a blank line, every line indented by 4, starting with a command.
            if lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()) and COMMAND.match(lines[i][4:]):
                end = i
                while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                    end += 1
                out.append(Snippet(doc, i + 1, "sh", "\n".join(x[4:] for x in lines[i:end]).strip() + "\n"))
                i = end
                continue
            i += 1
    return out


def _matches(snippet: Snippet, doc: str, pattern: str) -> bool:
    """EXEMPT's patterns are regular expressions, SLOW's plain text."""
    return doc == snippet.doc and bool(re.search(pattern, snippet.text, re.M))


def _rule(snippet: Snippet, rules: dict[tuple[str, str], str]) -> str | None:
    for (doc, pattern), why in rules.items():
        if _matches(snippet, doc, pattern if rules is EXEMPT else re.escape(pattern)):
            return why
    return None


ALL = snippets()
RUN = [s for s in ALL if s.kind in ("python", "sh") and _rule(s, EXEMPT) is None]
FAST = [s for s in RUN if _rule(s, SLOW) is None and _rule(s, OWN_TEST) is None]
MARKED = [s for s in RUN if _rule(s, SLOW) is not None]


def _run(snippet: Snippet, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    if snippet.kind == "python":
        exec(compile(snippet.text, snippet.id, "exec"), {"__name__": "__snippet__"})
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", snippet.text], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, f"{snippet.id} exited {done.returncode}:\n{done.stderr[-4000:]}"


@pytest.fixture
def workspace(tiny_workspace: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_workspace, tmp_path / "ws"))


@pytest.mark.parametrize("snippet", FAST, ids=[s.id for s in FAST])
def test_snippet_runs_as_written(snippet: Snippet, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(snippet, workspace, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("snippet", MARKED, ids=[s.id for s in MARKED])
def test_long_snippet_runs_as_written(snippet: Snippet, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(snippet, workspace, monkeypatch)


def test_every_snippet_runs_or_is_exempt_with_a_reason() -> None:
    kinds = {s.kind for s in ALL}
    assert kinds <= {"python", "sh", "text", "json"}, f"a code block of an unknown language: {kinds}"
    for s in ALL:
        if s.kind == "text":
            assert PLACEHOLDER.search(s.text), f"{s.id}: a ```text block that is not a synopsis; make it ```sh"
    for (doc, pattern), why in EXEMPT.items():
        assert why and any(_matches(s, doc, pattern) for s in ALL), f"EXEMPT {doc}: {pattern!r} matches nothing"
    for (doc, text), why in SLOW.items():
        assert why and any(_matches(s, doc, re.escape(text)) for s in MARKED), f"SLOW {doc}: {text!r} matches nothing"
    for (doc, text), test in OWN_TEST.items():
        assert test in globals() and any(_matches(s, doc, re.escape(text)) for s in RUN), (doc, text)
    assert any(s.doc == "README.md" and s.kind == "python" for s in FAST)
    assert len(FAST) + len(MARKED) + len(OWN_TEST) + sum(_rule(s, EXEMPT) is not None for s in ALL) + sum(
        s.kind in ("text", "json") for s in ALL
    ) == len(ALL)


def _snippet(doc: str, needle: str) -> Snippet:
    (found,) = [s for s in ALL if s.doc == doc and needle in s.text]
    return found


def test_the_jax_snippet_writes_every_target_layer_as_transfer_does(workspace, monkeypatch) -> None:
    """Unequal depths (2 → 3 layers): the snippet's adapter has all three target layers and equals
    what `transfer` writes for the same role and settings (the snippet once wrote 2 of 3)."""
    _run(_snippet("README.md", "cl.load_weight_stacks"), workspace, monkeypatch)
    depth = cl.read_model_config(workspace / TARGET).num_layers
    assert depth == 3 and cl.read_model_config(workspace / SOURCE).num_layers == 2
    mine = load_file(str(workspace / "my_lora_llama/adapter_model.safetensors"))
    assert len(mine) == 2 * depth
    (report,) = cl.transfer(SOURCE, TARGET, [ADAPTER], "reference", cl.TransferOptions(svd=cl.SvdSettings(rank=320)))
    reference = load_file(str(workspace / "reference/adapter_model.safetensors"))
    for key, value in mine.items():
        np.testing.assert_allclose(
            value, reference[key], rtol=1e-4, atol=1e-4 * np.abs(reference[key]).max(), err_msg=key
        )
    assert report.to_json()["layer_map"]["target_to_source"] == [0, 1, 1]


def test_ci_runs_the_readme_test_commands_verbatim() -> None:
    ci = (ROOT / ".ci/run").read_text()
    fast = _snippet("README.md", "python -m pytest -q\n").text.strip()
    marked = _snippet("README.md", "HYPOTHESIS_PROFILE=full").text.strip()
    assert fast in ci and marked in ci
    assert ci.index(fast) < ci.index(marked)
