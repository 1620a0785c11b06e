"""The replication harness runs end to end (tiny sizes, one seed): checks the plumbing, not the numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "replication.py"


def test_smoke_run_produces_a_full_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--smoke", f"--out={tmp_path}"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    distilled = [r for r in result["rows"] if r.get("kind") == "distill"]
    rows = [r for r in result["rows"] if r.get("kind") != "distill"]
    targets = {r["target"] for r in rows}
    methods = {r["method"] for r in rows}
    assert targets == {"upgrade", "resized", "gemma2"}
    assert {"truncate", "cross_lora r=8", "lora_x r=8", "cross_lora r=8, gate 0.5"} <= methods
    assert len(rows) == len(targets) * len(methods)
    for r in rows:
        for key in ("L_base", "L_transfer", "L_trained"):
            assert math.isfinite(r[key]) and 0 < r[key] < 10, r
        assert r["modules_transferred"] <= r["modules_total"]
        # the summary's verdict for the pair at that rank (truncate: cross_lora's at the same rank)
        assert r["verdict"] in ("helps", "no_help", "says_nothing") or r["modules_transferred"] == 0, r
    # Same shapes, and truncate is a plain copy: the upgrade gets every module.
    (copy,) = [r for r in rows if r["target"] == "upgrade" and r["method"] == "truncate"]
    assert copy["modules_transferred"] == copy["modules_total"] > 0
    # Distillation: every target × (full, delta, full + anchor), scored on code and general text.
    assert {(r["target"], r["method"]) for r in distilled} == {
        (t, m) for t in targets for m in ("distill full", "distill delta", "distill full + anchor 0.5")
    }
    for r in distilled:
        for key in ("L_base", "L_transfer", "L_trained", "L_matched", "L_teacher", "G_base", "G_distill", "G_trained"):
            assert math.isfinite(r[key]) and 0 < r[key] < 10, r
        if r["method"].startswith("distill full"):  # its teacher is S + LoRA, scored on the same windows
            assert abs(r["L_teacher"] - rows[0]["L_source_lora"]) < 1e-4 * rows[0]["L_source_lora"], r
    data_free, distill = (tmp_path / "smoke.md").read_text().split("\n\n")
    assert data_free.count("\n") == len(rows) + 1 and distill.count("\n") == len(distilled) + 2


def test_smoke_teacher_rows(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--smoke", "--groups=teachers", f"--out={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "smoke_teachers.json").read_text())["rows"]
    assert {(r["target"], r["method"]) for r in rows} == {
        (t, m)
        for t in ("upgrade", "resized", "gemma2")
        for m in (
            "delta ×0.5",
            "delta ×1",
            "delta ×1.5",
            "product b=0.25",
            "product b=0.5",
            "product b=0.75",
            "full (S + LoRA)",
        )
    }
    for r in rows:
        for key in ("L_base", "L_teacher", "L_trained", "G_base", "G_teacher", "G_trained"):
            assert math.isfinite(r[key]) and 0 < r[key] < 10, r
        gain = r["L_base"] - r["L_trained"]
        if gain > 0:
            assert abs(r["recovered"] - (r["L_base"] - r["L_teacher"]) / gain) < 1e-9, r
    # S + LoRA does not depend on the target: the same score on every target's row.
    full = [r["L_teacher"] for r in rows if r["method"] == "full (S + LoRA)"]
    assert max(full) - min(full) < 1e-9 * max(full), full
    assert (tmp_path / "smoke_teachers.md").read_text().count("\n") == len(rows) + 2


def test_smoke_bpe_target(tmp_path):
    """Another vocabulary over the same text: transfer works on weights only, distillation by sequence."""
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--smoke", "--groups=distill,data_free", "--targets=bpe",
         "--distill_variants=sequence", f"--out={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "corpora (bpe tokens):" in proc.stdout
    rows = json.loads((tmp_path / "smoke.json").read_text())["rows"]
    distilled = [r for r in rows if r.get("kind") == "distill"]
    data_free = [r for r in rows if r.get("kind") != "distill"]
    assert {r["target"] for r in rows} == {"bpe"}
    assert {r["method"] for r in data_free} == {"truncate", "cross_lora r=8", "lora_x r=8", "cross_lora r=8, gate 0.5"}
    assert [r["method"] for r in distilled] == ["distill sequence"]
    for r in rows:
        for key in ("L_base", "L_transfer", "L_trained"):
            assert math.isfinite(r[key]) and 0 < r[key] < 10, r
    (copy,) = [r for r in data_free if r["method"] == "truncate"]
    assert copy["modules_transferred"] == copy["modules_total"] > 0  # the resized shapes: every module
    for r in distilled:
        for key in ("L_matched", "G_base", "G_distill", "G_trained"):
            assert math.isfinite(r[key]) and 0 < r[key] < 10, r
        # no logit-level teacher across vocabularies
        assert math.isnan(r["L_teacher"]) and math.isnan(r["recovered_teacher"]), r
    data_free_md, distill_md = (tmp_path / "smoke.md").read_text().split("\n\n")
    assert data_free_md.count("\n") == len(data_free) + 1 and distill_md.count("\n") == len(distilled) + 2
    assert "| bpe | distill sequence |" in distill_md and "| n/a |" in distill_md
