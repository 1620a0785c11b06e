"""crosslora_report.png: drawn from a real transfer's report, skipped modules marked by reason."""

from __future__ import annotations

import copy
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from crosslora_jax import OptionsError, OutputError, SvdSettings, TransferOptions, synthetic, transfer
from crosslora_jax.transfer.report_plot import (
    _STATUS_COLOURS,
    PLOT_FILE,
    STATUSES,
    _title,
    report_grids,
    svd_check_score,
    write_report_plot,
    write_report_plots,
)
from crosslora_jax.transfer.report_text import REPORT_FILE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GATE = 0.7  # identical layers give φ = 1, random ones φ ≈ chance ≤ 0.5: both far from the gate


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """Target layers 0-1 equal the source's, layer 3 is unrelated (gated), 2 has no adapter
    module, 4-5 no source layer: every status in one real transfer."""
    root = tmp_path_factory.mktemp("plot")
    src_cfg = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=4)
    tgt_cfg = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=6)
    src_t, tgt_t = synthetic.model_tensors(src_cfg, seed=0), synthetic.model_tensors(tgt_cfg, seed=1)
    tgt_t.update({k: v for k, v in src_t.items() if ".layers.0." in k or ".layers.1." in k})
    src = synthetic.write_model(root / "src", src_cfg, src_t)
    tgt = synthetic.write_model(root / "tgt", tgt_cfg, tgt_t)
    adapter = synthetic.write_adapter(root / "lora", src_cfg, seed=2, roles=("q", "v", "down"), rank=4,
                                      layers=[0, 1, 3])  # fmt: skip
    options = TransferOptions(svd=SvdSettings(rank=8), layer_map="index", min_similarity=GATE)
    (report,) = transfer(src, tgt, [adapter], root / "out", options)
    return root / "out", report


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _pixels_of(path: Path, hex_colour: str) -> int:
    from matplotlib.image import imread

    rgb = imread(path)[..., :3]
    want = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    return int(np.all(np.abs(rgb - want) < 1.5 / 255, axis=-1).sum())


def test_the_png_is_written_beside_the_report(run) -> None:
    folder, report = run
    path = write_report_plot(folder, report)
    assert path == folder / PLOT_FILE and (folder / REPORT_FILE).is_file()
    assert path.stat().st_size > 10_000
    width, height = _png_size(path)
    assert 800 <= width <= 4000 and 400 <= height <= 4000, (width, height)
    assert not list(folder.glob(".*partial*")), "the temporary file must be renamed away"
    # Every status present in the run is drawn in its own colour (the status panel and legend).
    for status in ("transferred", "gate", "layer_map", "adapter"):
        assert _pixels_of(path, _STATUS_COLOURS[STATUSES.index(status)]) > 300, status


def test_the_grids_hold_the_reports_numbers(run) -> None:
    _, report = run
    grids = report_grids(report)
    assert grids.roles == ["q", "v", "down"] and grids.layers == list(range(6)) and grids.hidden_roles == []
    assert grids.in_subspace is None or np.isfinite(grids.in_subspace).any()
    want_status = {0: "transferred", 1: "transferred", 2: "adapter", 3: "gate", 4: "layer_map", 5: "layer_map"}
    for m in report["modules"]:
        j, c = m["target_layer"], grids.roles.index(m["role"])
        assert STATUSES[grids.status[j, c]] == want_status[j], m["module"]
        if "phi_u" not in m:
            assert math.isnan(grids.similarity[j, c]) and math.isnan(grids.norm_ratio[j, c])
            continue
        # float64 re-derivation: the worse side, each normalised by its own chance level
        sides = [(m[f"phi_{s}"] - m[f"chance_{s}"]) / (1 - m[f"chance_{s}"]) for s in ("u", "v")]
        assert grids.similarity[j, c] == pytest.approx(min(sides), rel=1e-12, abs=1e-12)
        assert grids.norm_ratio[j, c] == pytest.approx(m["norm_ratio"], rel=1e-12)
    # Identical layers sit at 1 (float32 φ), unrelated ones near chance, far below.
    np.testing.assert_allclose(grids.similarity[:2], 1.0, rtol=1e-4)
    assert np.all(grids.similarity[3] < 0.5)


def test_the_title_names_the_pair_method_and_counts(run) -> None:
    _, report = run
    title = _title(report)
    assert "lora:  src → tgt" in title and "method cross_lora" in title and f"--min_similarity {GATE}" in title
    assert "6 modules transferred, 12 skipped (3 by the similarity gate, 6 with no source layer, " \
           "3 not in the adapter)" in title  # fmt: skip


def test_in_subspace_is_drawn_when_the_report_has_it(run, tmp_path) -> None:
    _, report = run
    plain = {k: v for k, v in report.items() if k != "modules"}
    plain["modules"] = [{k: v for k, v in m.items() if k != "in_subspace"} for m in report["modules"]]
    with_share = copy.deepcopy(plain)
    for n, m in enumerate(with_share["modules"]):
        if "phi_u" in m:
            m["in_subspace"] = 0.1 + 0.05 * n
    assert report_grids(plain).in_subspace is None
    grids = report_grids(with_share)
    drawn = [(m["target_layer"], grids.roles.index(m["role"]), m["in_subspace"]) for m in with_share["modules"]
             if "in_subspace" in m]  # fmt: skip
    assert all(grids.in_subspace[j, c] == share for j, c, share in drawn)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    width_3, _ = _png_size(write_report_plot(tmp_path / "a", plain))
    width_4, _ = _png_size(write_report_plot(tmp_path / "b", with_share))
    assert width_4 > 1.15 * width_3, "a fourth heat map was expected"


def test_phi_with_chance_one_is_marked_uninformative_not_drawn_as_a_value(tmp_path) -> None:
    """SVD rank ≥ the weight's dimension: the subspace is everything, φ = 1 = chance says nothing."""
    base = {"role": "q", "status": "transferred", "skipped_by": None, "norm_ratio": 0.5}
    report = {
        "adapter": "/a/my_lora",
        "source_model": "/m/A",
        "target_model": "/m/B",
        "method": "lora_x",
        "modules": [
            {**base, "target_layer": 0, "phi_u": 1.0, "phi_v": 1.0, "chance_u": 1.0, "chance_v": 1.0},
            {**base, "target_layer": 1, "phi_u": 1.0, "phi_v": 0.6, "chance_u": 1.0, "chance_v": 0.2},
            {**base, "target_layer": 2, "role": "o", "status": "skipped", "skipped_by": "something new"},
        ],
    }
    grids = report_grids(report)
    assert grids.roles == ["q"] and grids.hidden_roles == ["o"]
    assert grids.uninformative[0, 0] and math.isnan(grids.similarity[0, 0])
    assert not grids.uninformative[1, 0] and grids.similarity[1, 0] == pytest.approx((0.6 - 0.2) / 0.8, rel=1e-12)
    assert STATUSES[grids.status[2, 0]] == "none"  # no q entry in layer 2
    title = _title(report)
    assert "method lora_x" in title and "SVD rank" not in title  # absent fields are left out, not guessed
    assert "2 modules transferred, 1 skipped (1 for another reason)" in title
    assert _png_size(write_report_plot(tmp_path, report))[0] > 0


@pytest.mark.parametrize(
    "modules",
    [
        None,
        "q",
        [1, "x", None],
        [{"role": "q", "target_layer": True}, {"role": 3, "target_layer": 0}, {"role": "q", "target_layer": -1}],
        [{"role": "q", "target_layer": 0, "phi_u": "high", "chance_u": None, "norm_ratio": [1]}],
    ],
)
def test_an_odd_report_still_gives_a_picture(tmp_path, modules) -> None:
    """A hand-edited or foreign report: odd entries are left out, nothing raises."""
    report = {"modules": modules, "svd": "exact", "layer_map": 3}
    grids = report_grids(report)
    assert not np.isfinite(grids.similarity).any() and not np.isfinite(grids.norm_ratio).any()
    assert _png_size(write_report_plot(tmp_path, report))[0] > 0


def test_every_report_under_an_output_folder_gets_its_picture(run, tmp_path) -> None:
    _, report = run
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / REPORT_FILE).write_text(json.dumps(report.to_json()))
    assert write_report_plots(tmp_path) == [tmp_path / "first" / PLOT_FILE, tmp_path / "second" / PLOT_FILE]
    assert all(_png_size(tmp_path / n / PLOT_FILE)[0] > 0 for n in ("first", "second"))
    (tmp_path / "first" / REPORT_FILE).write_text("{not json")
    with pytest.raises(OutputError, match=r"first/crosslora_report\.json: malformed JSON"):
        write_report_plots(tmp_path)


def test_without_matplotlib_the_error_says_what_to_install(run, monkeypatch, tmp_path) -> None:
    _, report = run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(OptionsError) as info:
        write_report_plot(tmp_path, report)
    assert str(info.value) == "the report plot needs matplotlib: pip install 'crosslora_jax[plot]'"
    assert list(tmp_path.iterdir()) == []


def test_svd_check_panel_scores_pass_fallback_and_flag(run, tmp_path) -> None:
    """A real report's modules passed the check on their first route (1); a fallback on either
    side scores 0.5, a flag 0; a report without the figures draws no such panel."""
    _, report = run
    computed = [m for m in report["modules"] if "phi_u" in m]
    assert computed and all(svd_check_score(m) == 1.0 for m in computed)
    edited = copy.deepcopy(dict(report))
    first, second = [m for m in edited["modules"] if "phi_u" in m][:2]
    first["svd_target"] = {**first["svd_target"], "route": "gram-lanczos→exact"}
    second["svd_source"] = {**second["svd_source"], "flagged": True}
    grids = report_grids(edited)
    at = {(m["target_layer"], grids.roles.index(m["role"])): svd_check_score(m) for m in (first, second)}
    assert sorted(at.values()) == [0.0, 0.5] and all(grids.svd_check[k] == v for k, v in at.items())
    bare = {**edited, "modules": [{k: v for k, v in m.items() if not k.startswith("svd_")} for m in edited["modules"]]}
    assert report_grids(bare).svd_check is None
    (tmp_path / "c").mkdir()
    assert write_report_plot(tmp_path / "c", edited).is_file()
