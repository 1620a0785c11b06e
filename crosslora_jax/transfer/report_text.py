"""The transfer report as text: `crosslora_report.json` in each output folder, a per-module table
and the run's summary (what the CLI prints as its result). The report types are in
`crosslora_jax.transfer.report`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crosslora_jax._verdict import Verdict, moves_little
from crosslora_jax.arch import ROLES
from crosslora_jax.transfer.report import ModuleFigures, ModuleReport, TransferReport

REPORT_FILE = "crosslora_report.json"

_COLUMNS = (
    ("module", "{}", 34),
    ("src", "{}", 4),
    ("status", "{}", 11),
    ("E_src", "{:.2f}", 5),
    ("E_tgt", "{:.2f}", 5),
    ("phi_U", "{:.3f}", 5),
    ("chanceU", "{:.3f}", 7),
    ("phi_V", "{:.3f}", 5),
    ("chanceV", "{:.3f}", 7),
    ("in_sub", "{:.3f}", 6),
    ("|dWt|/|dWs|", "{:.3f}", 11),
)


def write_report(folder: Path, report: TransferReport) -> None:
    (folder / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")


_FIGURES = ("energy_source", "energy_target", "phi_u", "chance_u", "phi_v", "chance_v", "in_subspace", "norm_ratio")


def _cells(m: ModuleReport) -> list[Any]:
    return [m.label, m.source_layer, m.status, *(_figure(m.figures, k) for k in _FIGURES)]


def _figure(figures: ModuleFigures | None, name: str) -> float | None:
    return None if figures is None else getattr(figures, name)


def format_table(modules: Sequence[ModuleReport]) -> str:
    """One line per target module and role (a fused module's path shows its role: qkv_proj[q]);
    '-' where a value does not apply (skipped modules)."""
    header = " ".join(name.rjust(width) if i else name.ljust(width) for i, (name, _, width) in enumerate(_COLUMNS))
    lines = [header]
    for m in modules:
        cells = []
        for i, ((_, fmt, width), value) in enumerate(zip(_COLUMNS, _cells(m), strict=True)):
            text = "-" if value is None else fmt.format(value)
            cells.append(text.ljust(width) if i == 0 else text.rjust(width))
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _mean(values: Sequence[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def _span(values: Sequence[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.3f}" if abs(high - low) < 5e-4 else f"{low:.3f}-{high:.3f}"


def format_summary(
    report: TransferReport,
    output: Path | str,
    seconds: float,
    *,
    instead: str | None = None,
    subject: str | None = "the moved update",
) -> str:
    """The command's result: counts, skips by reason, and per role φ beside its own chance
    level (means over the role's computed modules), the share of ΔW_s inside the source
    subspaces, and the range of ‖ΔW_t‖/‖ΔW_s‖; last, the verdict line on `subject` (None: no
    verdict line), with `instead` (`format_verdict`)."""
    modules = report.modules
    status = Counter(m.status for m in modules)
    skipped = Counter(m.skipped_by for m in modules if m.skipped_by is not None)
    lines = [
        f"{report.adapter} -> {output}",
        f"  {report.method}, layer map {report.layer_map.kind}, {seconds:.1f}s: "
        f"{status['transferred']} modules transferred, {status['skipped']} skipped"
        + (f" ({', '.join(f'{n} by {why}' for why, n in sorted(skipped.items()))})" if skipped else ""),
        f"  {'role':<5} {'moved':>7} {'phi_U (chance)':>15} {'phi_V (chance)':>15} {'in_subspace':>11} "
        f"{'|dWt|/|dWs|':>13}",
    ]
    for role in ROLES:
        rows = [m for m in modules if m.role == role]
        computed = [m for m in rows if m.figures is not None]
        if not computed:
            continue
        moved = sum(m.status == "transferred" for m in rows)

        def values(key: str, rows: Sequence[ModuleReport] = computed) -> list[float]:
            return [v for v in (_figure(m.figures, key) for m in rows) if v is not None]

        phi_u = f"{_mean(values('phi_u'))} ({_mean(values('chance_u'))})" if values("phi_u") else "-"
        phi_v = f"{_mean(values('phi_v'))} ({_mean(values('chance_v'))})" if values("phi_v") else "-"
        ratio = _span(values("norm_ratio", [m for m in computed if m.status == "transferred"]))
        lines.append(
            f"  {role:<5} {f'{moved}/{len(rows)}':>7} {phi_u:>15} {phi_v:>15} {_mean(values('in_subspace')):>11} "
            f"{ratio:>13}"
        )
    if report.computed_layers:
        lines.append(_svd_check_line(report))
    if subject is not None:
        lines.append(format_verdict(report, instead=instead, subject=subject))
    return "\n".join(lines)


def format_verdict(report: TransferReport, *, instead: str | None = None, subject: str = "the moved update") -> str:
    """One line: whether `subject` (the moved update) is expected to help (`TransferReport.verdict`),
    and, where it is not or φ cannot say, `instead` (the command to run; None: nothing more)."""
    verdict: Verdict = report.verdict
    otherwise = "" if instead is None else f"; distil instead: {instead}"
    if verdict.outcome == "unmeasured":
        return (f"  verdict: not judged: {report.method} computes no subspaces, so no φ (--method=cross_lora "
                f"measures it){otherwise}")  # fmt: skip
    if verdict.outcome == "says_nothing":
        return (f"  verdict: φ says nothing: --svd_rank={report.svd.rank} reaches every moved weight's dimension "
                f"(chance 1); --svd_rank={verdict.suggested_rank} would measure it{otherwise}")  # fmt: skip
    assert verdict.lift is not None and verdict.phi is not None and verdict.chance is not None
    helps = verdict.outcome == "helps"
    left_out = f" (φ says nothing on {verdict.uninformative} more)" if verdict.uninformative else ""
    figures = (f"φ {verdict.phi:.3f} against chance {verdict.chance:.3f} over {verdict.judged} modules{left_out}, "
               f"{verdict.lift:+.2f} of the way from chance to 1 (helps from {verdict.helps_from:.2f})")  # fmt: skip
    if verdict.in_subspace is not None:
        figures += f"; {verdict.in_subspace:.0%} of the update lies inside the source subspaces"
    if helps:
        more = (
            f" (a larger --svd_rank than {report.svd.rank} moves more)" if moves_little(verdict, report.method) else ""
        )
        return f"  verdict: {subject} is expected to help: {figures}{more}"
    return f"  verdict: {subject} is not expected to help: {figures}{otherwise}"


def _svd_check_line(report: TransferReport) -> str:
    """How many computed weight SVDs the a-posteriori check sent to the exact SVD, and the
    largest subspace bound over the modules (source and target sides)."""
    bounds = [q.bound for m in report.modules if m.figures is not None
              for q in (m.figures.svd_source, m.figures.svd_target) if q is not None]  # fmt: skip
    worst = f"; largest subspace bound {max(bounds):.1e}" if bounds else ""
    return (f"  SVD check: {report.fallback_layers} of {report.computed_layers} computed weight SVDs fell back "
            f"to the exact SVD{worst}")  # fmt: skip
