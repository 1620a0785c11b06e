"""What the report says per module and per run: in_subspace, per-side chance, effective ranks,
truncate without SVDs, and the printed summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_inputs import SRC_CFG, make_inputs

from crosslora_jax import SvdSettings, TransferOptions, synthetic, transfer
from crosslora_jax.transfer.report_text import format_summary, format_table


@pytest.mark.parametrize("method", ["cross_lora", "lora_x"])
def test_self_transfer_norm_ratio_is_the_share_inside_the_subspaces(tmp_path, method) -> None:
    """Source = target: φ = 1 and ‖ΔW_t‖/‖ΔW_s‖ = in_subspace (< 1 where r_e < the dimensions)."""
    paths = make_inputs(tmp_path)
    options = TransferOptions(method=method, svd=SvdSettings(rank=12))
    (report,) = transfer(paths["source"], paths["source"], [paths["adapter"]], tmp_path / "out", options)
    moved = [m for m in report["modules"] if m["status"] == "transferred"]
    assert moved
    for m in moved:
        assert m["phi_u"] == pytest.approx(1.0, abs=1e-3) and m["phi_v"] == pytest.approx(1.0, abs=1e-3)
        # Both are norms of float32 products of O(1) factors: agree to float32 round-off, relatively.
        assert m["norm_ratio"] == pytest.approx(m["in_subspace"], rel=1e-3), m["module"]
    # r = 12 is below every dimension of this model (32 hidden, 16 kv), so something is dropped.
    assert max(m["in_subspace"] for m in moved) < 0.95
    assert report["svd"]["effective_rank"] == {
        "q": {"source": 12, "target": 12},
        "v": {"source": 12, "target": 12},
    }


def test_effective_rank_is_capped_per_role_and_side(tmp_path) -> None:
    paths = make_inputs(tmp_path)
    (report,) = transfer(*(paths[k] for k in ("source", "target")), [paths["adapter"]], tmp_path / "o",
                         TransferOptions(svd=SvdSettings(rank=40)))  # fmt: skip
    v = next(m for m in report["modules"] if m["role"] == "v" and m["status"] == "transferred")
    (m_s, n_s), (m_t, n_t) = v["source_shape"], v["target_shape"]
    assert min(m_s, n_s) < 40 and min(m_t, n_t) < 40  # the cap is what this test is about
    assert report["svd"]["effective_rank"]["v"] == {"source": min(40, m_s, n_s), "target": min(40, m_t, n_t)}
    assert report["svd"]["effective_rank"]["q"]["source"] == min(40, SRC_CFG["hidden_size"])
    for m in report["modules"]:
        if m["status"] == "transferred":
            assert m["svd_rank"] == [report["svd"]["effective_rank"][m["role"]][side] for side in ("source", "target")]


def test_truncate_computes_no_svd_unless_the_gate_needs_one(tmp_path) -> None:
    paths = make_inputs(tmp_path)
    (report,) = transfer(*(paths[k] for k in ("source", "target")), [paths["adapter"]], tmp_path / "t",
                         TransferOptions(method="truncate"))  # fmt: skip
    assert report["subspaces"] == {"computed_layers": 0, "cached_layers": 0, "fallback_layers": 0}
    assert report["svd"]["effective_rank"] == {"q": None, "v": None}
    src = load_file(str(paths["adapter"] / "adapter_model.safetensors"))
    out = load_file(str(tmp_path / "t" / "adapter_model.safetensors"))
    for m in report["modules"]:
        if m["status"] != "transferred":
            continue
        assert m["phi_u"] is None and m["energy_source"] is None and m["in_subspace"] is None
        assert m["svd_source"] is None and m["svd_target"] is None  # no SVD, no check
        prefix_s, prefix_t = f"base_model.model.{m['source_module']}", f"base_model.model.{m['module']}"
        a_s, b_s = src[f"{prefix_s}.lora_A.weight"], src[f"{prefix_s}.lora_B.weight"]
        a_t, b_t = out[f"{prefix_t}.lora_A.weight"], out[f"{prefix_t}.lora_B.weight"]
        (m_t, n_t), k = m["target_shape"], a_s.shape[0]
        want_a, want_b = np.zeros((k, n_t), a_s.dtype), np.zeros((m_t, k), b_s.dtype)
        want_a[:, : min(n_t, a_s.shape[1])] = a_s[:, :n_t]
        want_b[: min(m_t, b_s.shape[0])] = b_s[:m_t]
        np.testing.assert_array_equal(a_t, want_a)
        np.testing.assert_array_equal(b_t, want_b)
        ratio = np.linalg.norm(want_b.astype(np.float64) @ want_a) / np.linalg.norm(b_s.astype(np.float64) @ a_s)
        assert m["norm_ratio"] == pytest.approx(ratio, rel=1e-4)
    gated = TransferOptions(method="truncate", min_similarity=0.01, svd=SvdSettings(rank=8))
    (report,) = transfer(*(paths[k] for k in ("source", "target")), [paths["adapter"]], tmp_path / "g", gated)
    assert report["subspaces"]["computed_layers"] > 0
    assert all(m["phi_u"] is not None for m in report["modules"] if m["status"] == "transferred")


def test_table_and_summary_show_each_sides_chance(tmp_path) -> None:
    paths = make_inputs(tmp_path)
    (report,) = transfer(*(paths[k] for k in ("source", "target")), [paths["adapter"]], tmp_path / "o",
                         TransferOptions(svd=SvdSettings(rank=6)))  # fmt: skip
    table = format_table(report.modules).splitlines()
    assert table[0].split()[5:10] == ["phi_U", "chanceU", "phi_V", "chanceV", "in_sub"]
    v0 = next(m for m in report["modules"] if m["module"] == "model.layers.0.self_attn.v_proj")
    assert v0["chance_u"] != pytest.approx(v0["chance_v"])  # v: 12 rows vs 32 columns in common
    row = next(line for line in table if line.startswith("model.layers.0.self_attn.v_proj"))
    assert f"{v0['chance_u']:.3f}" in row.split() and f"{v0['chance_v']:.3f}" in row.split()
    summary = format_summary(report, tmp_path / "o", 1.5)
    lines = summary.splitlines()
    assert "cross_lora, layer map linear, 1.5s:" in lines[1]
    moved = sum(m["status"] == "transferred" for m in report["modules"])
    skipped = len(report["modules"]) - moved
    assert f"{moved} modules transferred, {skipped} skipped" in lines[1]
    v_line = next(line for line in lines if line.split()[0] == "v")
    assert f"({v0['chance_u']:.3f})" in v_line  # one layer's chance is every layer's: same shapes
    computed = report["subspaces"]["computed_layers"]
    assert lines[-2].startswith(f"  SVD check: 0 of {computed} computed weight SVDs fell back to the exact SVD;")
    assert lines[-1].startswith("  verdict: ")  # tests/test_verdict.py holds what it says


def test_summary_counts_skips_by_reason(tmp_path) -> None:
    cfg = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2)
    deeper = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=3)
    src = synthetic.write_model(tmp_path / "src", cfg, synthetic.model_tensors(cfg, seed=0))
    tgt = synthetic.write_model(tmp_path / "tgt", deeper, synthetic.model_tensors(deeper, seed=1))
    adapter = synthetic.write_adapter(tmp_path / "lora", cfg, seed=2, roles=("q",))
    (report,) = transfer(src, tgt, [adapter], tmp_path / "o", TransferOptions(layer_map="index", method="truncate"))
    summary = format_summary(report, tmp_path / "o", 0.1)
    assert "2 modules transferred, 1 skipped (1 by layer_map)" in summary
    q_line = next(line for line in summary.splitlines() if line.split()[0] == "q")
    assert q_line.split()[1] == "2/3" and q_line.split()[2] == "-"  # truncate: no φ measured


_TOP_KEYS = ["adapter", "output", "source_model", "target_model", "method", "svd", "layer_map", "min_similarity",
             "output_dtype", "devices", "summary", "verdict", "subspaces", "timings", "modules"]  # fmt: skip
_WHERE = ["module", "role", "target_layer", "source_layer"]
_VERDICT = ["status", "skipped_by", "reason"]
_FIGURES = ["source_module", "method", "rank", "alpha", "source_shape", "target_shape", "svd_rank", "energy_source",
            "energy_target", "phi_u", "phi_v", "chance_u", "chance_v", "norm_ratio", "in_subspace", "svd_source",
            "svd_target"]  # fmt: skip


def test_the_report_file_is_the_returned_reports_json_with_its_keys_in_order(tmp_path) -> None:
    """crosslora_report.json is a user-facing format: its keys and their order are pinned here."""
    paths = make_inputs(tmp_path)
    # Source layer 1 only: target layer 0 (source 0) is not in the adapter; of layers 1-2 (source 1)
    # the gate drops the modules whose min(φ_U, φ_V) is ~0.17 and keeps those at ~0.22.
    adapter = synthetic.write_adapter(tmp_path / "one", SRC_CFG, seed=2, roles=("q", "v"), layers=[1])
    options = TransferOptions(svd=SvdSettings(rank=6), min_similarity=0.19)
    (report,) = transfer(paths["source"], paths["target"], [adapter], paths["output"], options)
    written = json.loads((paths["output"] / "crosslora_report.json").read_text())
    assert written == json.loads(json.dumps(report.to_json()))
    assert list(written) == _TOP_KEYS and dict(report) == report.to_json()  # the mapping view is the JSON
    assert list(written["timings"]) == ["compute_seconds", "svd_seconds", "read_seconds", "cache_seconds",
                                        "project_seconds", "write_seconds"]  # fmt: skip
    assert list(written["svd"])[-1] == "effective_rank" and list(written["layer_map"]) == ["kind", "target_to_source"]
    assert list(written["subspaces"]) == ["computed_layers", "cached_layers", "fallback_layers"]
    assert list(written["verdict"]) == ["outcome", "lift", "phi", "chance", "in_subspace", "judged", "uninformative",
                                        "suggested_rank", "helps_from"]  # fmt: skip
    for m in written["modules"]:
        for side in ("svd_source", "svd_target") if "rank" in m else ():
            assert list(m[side]) == ["route", "residual", "gap_estimate", "bound", "flagged"]
            assert m[side]["route"] == "gram-eigh"  # small weights: the full eigh of the Gram matrix
            assert 0 <= m[side]["residual"] < 1e-5 and m[side]["gap_estimate"] > 0 and m[side]["flagged"] is False
    kinds = {m["skipped_by"]: list(m) for m in written["modules"]}
    assert kinds[None] == kinds["gate"] == _WHERE + _FIGURES + _VERDICT  # computed: transferred or gated out
    assert kinds["adapter"] == _WHERE + _VERDICT  # never computed: no figures
    assert written["summary"] == {s: sum(m.status == s for m in report.modules) for s in ("transferred", "skipped")}
    for typed, entry in zip(report.modules, written["modules"], strict=True):
        assert typed.status == entry["status"] and (typed.figures is None) == ("rank" not in entry)


def test_a_fused_target_module_reports_each_of_its_roles(tmp_path) -> None:
    """phi3 target: q, k, v share one qkv_proj path; the report has one entry per role (JSON), the
    table labels them qkv_proj[q] etc., the summary counts per role, and the file holds one LoRA."""
    phi3 = synthetic.model_config("phi3", hidden=32, intermediate=48, heads=4, kv_heads=2, layers=2)
    paths = make_inputs(tmp_path)
    tgt = synthetic.write_model(tmp_path / "phi3", phi3, synthetic.model_tensors(phi3, seed=1))
    adapter = synthetic.write_adapter(tmp_path / "lora", SRC_CFG, seed=2, roles=("q", "k", "v", "up"), rank=4)
    (report,) = transfer(paths["source"], tgt, [adapter], tmp_path / "o", TransferOptions(svd=SvdSettings(rank=6)))
    qkv = "model.layers.1.self_attn.qkv_proj"
    assert [(m.module, m.role) for m in report.modules if m.target_layer == 1] == [
        (qkv, "q"), (qkv, "k"), (qkv, "v"), ("model.layers.1.mlp.gate_up_proj", "up")
    ]  # fmt: skip
    assert all(m["status"] == "transferred" for m in report["modules"])
    table = format_table(report.modules).splitlines()
    assert [line.split()[0] for line in table[1:5]] == [f"model.layers.0.self_attn.qkv_proj[{r}]" for r in "qkv"] + [
        "model.layers.0.mlp.gate_up_proj[up]"
    ]
    summary = format_summary(report, tmp_path / "o", 1.0).splitlines()
    assert [line.split()[:2] for line in summary[3:-2]] == [["q", "2/2"], ["k", "2/2"], ["v", "2/2"], ["up", "2/2"]]
    assert summary[-2].startswith("  SVD check: 0 of ") and summary[-1].startswith("  verdict: ")
    written = load_file(str(tmp_path / "o" / "adapter_model.safetensors"))
    assert written[f"base_model.model.{qkv}.lora_A.weight"].shape == (12, 32)  # q, k, v at rank 4
    assert written[f"base_model.model.{qkv}.lora_B.weight"].shape == (64, 12)  # 32 + 16 + 16 rows
