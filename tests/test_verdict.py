"""The verdict that ends the summary: whether the moved update is expected to help, from φ above
its chance level per module (worse informative side), `φ says nothing` where the SVD rank reaches
every dimension, and the `distill` command with the user's paths otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny
from _bad_inputs import make_inputs

from crosslora_jax import SvdSettings, TransferOptions, synthetic, transfer
from crosslora_jax._verdict import HELPS_FROM, distill_command, distilled_output, judge, moves_little
from crosslora_jax.transfer.report import ModuleFigures, ModuleReport
from crosslora_jax.transfer.report_text import format_summary


def module(
    phi: tuple[float | None, float | None],
    chance: tuple[float | None, float | None],
    *,
    in_subspace: float | None = 0.3,
    shapes: tuple[tuple[int, int], tuple[int, int]] = ((64, 64), (48, 48)),
    skipped_by: str | None = None,
) -> ModuleReport:
    figures = ModuleFigures(
        source_module="model.layers.0.self_attn.q_proj",
        method="cross_lora",
        rank=8,
        alpha=16.0,
        source_shape=shapes[0],
        target_shape=shapes[1],
        svd_rank=None,
        energy_source=None,
        energy_target=None,
        phi_u=phi[0],
        phi_v=phi[1],
        chance_u=chance[0],
        chance_v=chance[1],
        norm_ratio=None,
        in_subspace=in_subspace,
    )
    return ModuleReport("model.layers.0.self_attn.q_proj", "q", 0, 0, skipped_by, None, figures)  # type: ignore[arg-type]


def test_subspaces_far_above_chance_are_expected_to_help() -> None:
    # lifts: module 1 U (0.9 − 0.3)/0.7 = 0.857, V (0.8 − 0.3)/0.7 = 0.714 → 0.714 (the worse side);
    # module 2 U (0.95 − 0.5)/0.5 = 0.9, V (0.9 − 0.25)/0.75 = 0.867 → 0.867. Mean 0.790.
    verdict = judge([module((0.9, 0.8), (0.3, 0.3)), module((0.95, 0.9), (0.5, 0.25), in_subspace=0.5)])
    assert verdict.outcome == "helps" and verdict.judged == 2 and verdict.uninformative == 0
    assert verdict.lift == pytest.approx((0.5 / 0.7 + 0.65 / 0.75) / 2)
    assert verdict.phi == pytest.approx((0.8 + 0.9) / 2) and verdict.chance == pytest.approx((0.3 + 0.25) / 2)
    assert verdict.in_subspace == pytest.approx(0.4) and verdict.lift > HELPS_FROM + 0.2


def test_subspaces_at_chance_are_not_expected_to_help() -> None:
    # what the replication's independently trained targets look like: φ within 0.01 of chance
    verdict = judge([module((0.27, 0.26), (0.27, 0.25)), module((0.5, 0.24), (0.5, 0.25))])
    assert verdict.outcome == "no_help" and verdict.lift is not None
    assert verdict.lift == pytest.approx((0.0 + (0.24 - 0.25) / 0.75) / 2) and verdict.lift < HELPS_FROM - 0.4


def test_a_side_at_chance_one_is_left_out_and_a_module_with_no_other_side_counted_apart() -> None:
    # module 1: U at chance 1 (φ 1, no information), V informative at lift (0.6 − 0.2)/0.8 = 0.5 +
    # 0.1 → 0.625 on its own; module 2 informative on no side; module 3 gated out (not moved).
    verdict = judge(
        [
            module((1.0, 0.7), (1.0, 0.2)),
            module((1.0, 1.0), (1.0, 1.0)),
            module((0.0, 0.0), (0.5, 0.5), skipped_by="gate"),
        ]
    )
    assert verdict.outcome == "helps" and verdict.judged == 1 and verdict.uninformative == 1
    assert verdict.lift == pytest.approx(0.5 / 0.8) and verdict.phi == pytest.approx(0.7)


def test_phi_says_nothing_where_every_side_is_at_chance_one() -> None:
    # q (32×32 / 48×48) and k (16×32 / 24×48): common sides (32, 32) and (16, 32); the smallest
    # module's larger side is 32, so --svd_rank=8 puts chance at ≤ 1/4 there
    shapes_k = ((16, 32), (24, 48))
    verdict = judge([module((1.0, 1.0), (1.0, 1.0), shapes=((32, 32), (48, 48))),
                     module((1.0, 1.0), (1.0, 1.0), shapes=shapes_k)])  # fmt: skip
    assert verdict.outcome == "says_nothing" and verdict.lift is None and verdict.uninformative == 2
    assert verdict.suggested_rank == 8


def test_without_phi_the_verdict_is_unmeasured() -> None:
    verdict = judge([module((None, None), (None, None), in_subspace=None)])
    assert verdict.outcome == "unmeasured" and verdict.judged == 0 and verdict.in_subspace is None


def test_a_projecting_method_that_keeps_little_of_the_update_is_told_about_the_rank() -> None:
    keeps_little = judge([module((0.9, 0.9), (0.3, 0.3), in_subspace=0.2)])
    keeps_most = judge([module((0.9, 0.9), (0.3, 0.3), in_subspace=0.9)])
    assert moves_little(keeps_little, "cross_lora") and moves_little(keeps_little, "lora_x")
    assert not moves_little(keeps_little, "truncate") and not moves_little(keeps_most, "cross_lora")


@pytest.mark.parametrize(
    ("output", "distilled"),
    [("my_lora_llama/", "my_lora_llama_distilled/"), ("out/my lora", "out/my lora_distilled")],
)
def test_the_suggested_output_is_the_users_with_a_suffix(output, distilled) -> None:
    assert distilled_output(output) == distilled


def test_the_distill_command_quotes_the_users_paths() -> None:
    command = distill_command("Qwen2.5-1.5B/", "my models/Llama", "my_lora/", "out/", cache_dir="~cache")
    assert command == ("python -m crosslora_jax.distill --source_model=Qwen2.5-1.5B/ --target_model='my models/Llama' "
                       "--adapter=my_lora/ --output=out_distilled/ --cache_dir='~cache'")  # fmt: skip


def test_an_unrelated_pair_is_told_to_distil_with_the_users_paths(tmp_path) -> None:
    """Two independently drawn models: φ at chance, so the line says no and gives the command."""
    paths = make_inputs(tmp_path)
    (report,) = transfer(paths["source"], paths["target"], [paths["adapter"]], paths["output"],
                         TransferOptions(svd=SvdSettings(rank=8)))  # fmt: skip
    assert report.verdict.outcome == "no_help" and report.to_json()["verdict"]["outcome"] == "no_help"
    instead = distill_command("src/", "tgt/", "lora/", "out/")
    last = format_summary(report, "out/", 1.0, instead=instead).splitlines()[-1]
    assert last.startswith("  verdict: the moved update is not expected to help: φ ")
    assert last.endswith("; distil instead: python -m crosslora_jax.distill --source_model=src/ --target_model=tgt/ "
                         "--adapter=lora/ --output=out_distilled/")  # fmt: skip


def test_a_self_transfer_is_expected_to_help(tmp_path) -> None:
    paths = make_inputs(tmp_path)
    (report,) = transfer(paths["source"], paths["source"], [paths["adapter"]], paths["output"],
                         TransferOptions(svd=SvdSettings(rank=8)))  # fmt: skip
    last = format_summary(report, paths["output"], 1.0, instead="never shown").splitlines()[-1]
    assert last.startswith("  verdict: the moved update is expected to help: φ 1.000 against chance ")
    assert "never shown" not in last and report.verdict.lift == pytest.approx(1.0, abs=1e-3)


def test_phi_says_nothing_on_a_tiny_model_at_the_default_rank(tmp_path) -> None:
    """The README's tiny models with a LoRA on q and o (square weights): --svd_rank=320 covers both
    sides of every weight, so chance is 1 everywhere and the line says so."""
    source = synthetic.write_model(
        tmp_path / "src", _tiny.SOURCE_CFG, synthetic.model_tensors(_tiny.SOURCE_CFG, seed=0)
    )
    target = synthetic.write_model(
        tmp_path / "tgt", _tiny.TARGET_CFG, synthetic.model_tensors(_tiny.TARGET_CFG, seed=1)
    )
    adapter = synthetic.write_adapter(tmp_path / "lora", _tiny.SOURCE_CFG, seed=2, roles=("q", "o"), rank=4)
    (report,) = transfer(source, target, [adapter], tmp_path / "out", TransferOptions())
    assert report.svd.rank == 320 and report.verdict.outcome == "says_nothing"
    last = format_summary(report, "out/", 1.0, instead="python -m crosslora_jax.distill ...").splitlines()[-1]
    hidden = _tiny.SOURCE_CFG["hidden_size"]  # the smaller model's q/o are hidden × hidden
    assert last == (f"  verdict: φ says nothing: --svd_rank=320 reaches every moved weight's dimension (chance 1); "
                    f"--svd_rank={hidden // 4} would measure it; distil instead: python -m crosslora_jax.distill ...")  # fmt: skip
