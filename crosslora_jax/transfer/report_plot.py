"""`crosslora_report.png`: the report as heat maps, target layer (rows) × role (columns).

Whether a transfer means anything is a per-layer × per-role pattern: subspace similarity against
its chance level, ‖ΔW_t‖/‖ΔW_s‖, the share of ΔW_s inside the source weight's subspaces (when the
report has it), the SVD check of both weights (when the report has it) and which modules were
skipped, and why. matplotlib is an optional extra
(`pip install 'crosslora_jax[plot]'`), imported only when a plot is asked for; drawing uses the
Agg canvas directly, so no display is needed and pyplot's global state is never touched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from crosslora_jax._errors import OptionsError, OutputError
from crosslora_jax._verdict import CHANCE_IS_ONE, above_chance  # the verdict's reading of φ, drawn per cell
from crosslora_jax.arch import ROLES
from crosslora_jax.io import read_json_object
from crosslora_jax.transfer.report import TransferReport
from crosslora_jax.transfer.report_text import REPORT_FILE

PLOT_FILE = "crosslora_report.png"

# Status codes of ReportGrids.status, in legend order.
STATUSES: tuple[str, ...] = ("transferred", "gate", "layer_map", "adapter", "none")
_STATUS_LABELS = (
    "transferred",
    "skipped: --min_similarity gate",
    "skipped: no source layer (layer map)",
    "skipped: not in the adapter",
    "other: no entry, or a reason\nthis version does not know",
)
_STATUS_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#d9d9d9", "#ffffff")
_NO_VALUE = "#f2f2f2"
_HATCH = "#b0b0b0"


def require_matplotlib(option: str | None = None) -> None:
    """Raise OptionsError now (before any compute) if the plot could not be drawn; `option` names
    what asked for it (the CLI passes its flag)."""
    try:
        import matplotlib  # noqa: F401 — optional extra, imported only when plotting
    except ImportError:
        raise OptionsError(option, "the report plot needs matplotlib: pip install 'crosslora_jax[plot]'") from None


@dataclasses.dataclass(frozen=True)
class ReportGrids:
    """The report's per-module numbers laid out as [layer, role] grids (NaN: no value)."""

    layers: list[int]
    roles: list[str]
    similarity: Annotated[np.ndarray, "L R"]  # min over informative sides of (φ − chance)/(1 − chance)
    uninformative: Annotated[np.ndarray, "L R"]  # computed, but chance = 1 on both sides: φ says nothing
    norm_ratio: Annotated[np.ndarray, "L R"]
    in_subspace: Annotated[np.ndarray, "L R"] | None  # None when no module reports it
    svd_check: Annotated[np.ndarray, "L R"] | None  # `svd_check_score`; None when no module reports it
    status: Annotated[np.ndarray, "L R"]  # int index into STATUSES
    hidden_roles: list[str]  # roles with no computed module, left out of the grids


def svd_check_score(module: Mapping[str, Any]) -> float | None:
    """The worse of the source and target weights' SVD checks: 1 = the first route passed, 0.5 =
    the check sent it to the exact SVD (which passed), 0 = flagged (not backward-stable)."""
    scores = []
    for side in ("svd_source", "svd_target"):
        quality = module.get(side)
        if isinstance(quality, Mapping):
            fell_back = "→" in str(quality.get("route", ""))
            scores.append(0.0 if quality.get("flagged") is True else 0.5 if fell_back else 1.0)
    return min(scores) if scores else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _modules(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The report's module entries; a hand-edited or foreign report's odd entries are dropped."""
    modules = report.get("modules")
    return [m for m in modules if isinstance(m, Mapping)] if isinstance(modules, list) else []


def _layer(m: Mapping[str, Any]) -> int | None:
    layer = m.get("target_layer")
    return layer if isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer < 100_000 else None


def _status_code(m: Mapping[str, Any]) -> int:
    if m.get("status") == "transferred":
        return 0
    reason = m.get("skipped_by")
    return STATUSES.index(reason) if reason in STATUSES[1:4] else STATUSES.index("none")


def report_grids(report: Mapping[str, Any]) -> ReportGrids:
    """Lay the report's modules out by (target layer, role); unknown fields are ignored."""
    modules = [m for m in _modules(report) if _layer(m) is not None and isinstance(m.get("role"), str)]
    present = {m["role"] for m in modules}
    roles_all = [r for r in ROLES if r in present] + sorted(present - set(ROLES))[:20]
    # A role with no computed module (the adapter lacks it) would only be an empty column.
    computed = {m["role"] for m in modules if _status_code(m) in (0, STATUSES.index("gate"))}
    shown = [r for r in roles_all if r in computed]
    roles = shown or roles_all
    layers = list(range(max((m["target_layer"] for m in modules), default=-1) + 1))
    shape = (len(layers), len(roles))
    similarity, norm_ratio, in_subspace, svd_check = (np.full(shape, np.nan) for _ in range(4))
    uninformative = np.zeros(shape, bool)
    status = np.full(shape, STATUSES.index("none"))
    has_in_subspace = False
    column = {r: c for c, r in enumerate(roles)}
    for m in modules:
        if m["role"] not in column:
            continue
        at = (m["target_layer"], column[m["role"]])
        status[at] = _status_code(m)
        sides = [(_number(m.get(f"phi_{s}")), _number(m.get(f"chance_{s}"))) for s in ("u", "v")]
        sides = [(phi, chance) for phi, chance in sides if phi is not None and chance is not None]
        informative = [above_chance(phi, chance) for phi, chance in sides if chance < CHANCE_IS_ONE]
        if informative:
            similarity[at] = min(informative)
        uninformative[at] = bool(sides) and not informative
        ratio = _number(m.get("norm_ratio"))
        norm_ratio[at] = np.nan if ratio is None else ratio
        share = _number(m.get("in_subspace"))
        if share is not None:
            in_subspace[at], has_in_subspace = share, True
        score = svd_check_score(m)
        if score is not None:
            svd_check[at] = score
    return ReportGrids(layers, roles, similarity, uninformative, norm_ratio,
                       in_subspace if has_in_subspace else None,
                       svd_check if np.isfinite(svd_check).any() else None, status,
                       [r for r in roles_all if r not in roles])  # fmt: skip


def _name(path: Any) -> str:
    return (Path(str(path)).name or str(path)) if path else "?"


def _title(report: Mapping[str, Any]) -> str:
    """Adapter, pair, settings and counts; fields the report lacks are left out."""
    modules = _modules(report)
    counts = dict.fromkeys(STATUSES, 0)
    for m in modules:  # hidden roles included
        counts[STATUSES[_status_code(m)]] += 1
    svd = report.get("svd") if isinstance(report.get("svd"), Mapping) else {}
    layer_map = report.get("layer_map") if isinstance(report.get("layer_map"), Mapping) else {}
    settings = [
        f"method {report['method']}" if "method" in report else "",
        f"SVD rank {svd['rank']} ({svd.get('engine', '?')})" if "rank" in svd else "",
        f"layer map {layer_map['kind']}" if "kind" in layer_map else "",
        f"--min_similarity {report['min_similarity']}" if "min_similarity" in report else "",
    ]
    why = {"gate": "by the similarity gate", "layer_map": "with no source layer", "adapter": "not in the adapter",
           "none": "for another reason"}  # fmt: skip
    skipped = len(modules) - counts["transferred"]
    reasons = ", ".join(f"{counts[s]} {label}" for s, label in why.items() if counts[s])
    return "\n".join([
        f"{_name(report.get('adapter'))}:  {_name(report.get('source_model'))} → {_name(report.get('target_model'))}",
        "  ·  ".join(part for part in settings if part),
        f"{counts['transferred']} modules transferred, " + (f"{skipped} skipped ({reasons})" if skipped else "none skipped"),
    ])  # fmt: skip


def _median(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    return f"median {np.median(finite):.2f}" if finite.size else "no values"


@dataclasses.dataclass(frozen=True)
class _Panel:
    title: str
    values: Annotated[np.ndarray, "L R"]
    label: str


def write_report_plot(folder: Path, report: TransferReport | Mapping[str, Any]) -> Path:
    """Draw `report` (one adapter's, as `transfer` returns it, or a `crosslora_report.json`
    object) to `folder/crosslora_report.png`.

    Raises OptionsError when matplotlib is not installed. The file is written under a temporary
    name and renamed, so a failed plot leaves no partial PNG.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if isinstance(report, TransferReport):
        report = report.to_json()  # drawn from the JSON, so a report file draws the same
    grids = report_grids(report)
    fig = _heat_maps(report, grids) if grids.layers and grids.roles else _nothing_to_draw(report)
    FigureCanvasAgg(fig)
    path = Path(folder) / PLOT_FILE
    partial = path.with_name(f".{PLOT_FILE}.partial-{os.getpid()}")
    try:
        fig.savefig(partial, format="png")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _nothing_to_draw(report: Mapping[str, Any]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=110, layout="constrained")
    fig.suptitle(_title(report), fontsize=10)
    fig.text(0.5, 0.4, "this report has no module entries to draw", ha="center", fontsize=10)
    return fig


def _heat_maps(report: Mapping[str, Any], grids: ReportGrids) -> Any:
    from matplotlib.figure import Figure

    n_layers, n_roles = len(grids.layers), len(grids.roles)
    panels = [
        _Panel("φ above chance (min of U, V)", grids.similarity,
               "0 = chance, 1 = identical subspaces\n(φ − chance)/(1 − chance); < 0 drawn as 0"),
        _Panel("‖ΔW_t‖ / ‖ΔW_s‖", grids.norm_ratio,
               "share of the update's norm that arrives;\n1 = all (every method only projects or crops)"),
    ]  # fmt: skip
    if grids.in_subspace is not None:
        panels.append(_Panel("ΔW_s inside the source subspaces", grids.in_subspace,
                             "share of ‖ΔW_s‖ the method can carry;\nthe rest is dropped"))  # fmt: skip
    if grids.svd_check is not None:
        panels.append(_Panel("SVD check (worse of source, target)", grids.svd_check,
                             "1 = passed, 0.5 = fell back to the exact SVD,\n0 = flagged: not backward-stable"))  # fmt: skip
    annotate = n_layers <= 40 and n_roles <= 10
    grid_h = min(24.0, max(1.5, n_layers * (0.3 if annotate else 0.16)))
    panel_w = max(3.0, 0.45 * n_roles + 0.6)
    fig = Figure(figsize=((len(panels) + 1) * panel_w + 0.5, grid_h + 2.6), dpi=110, layout="constrained")
    # Row 0: the heat maps (shared layer axis); row 1: their colour bars, and the status legend.
    axes = fig.subplots(2, len(panels) + 1, height_ratios=[grid_h, 1.2], sharey="row", squeeze=False)
    for column, panel in enumerate(panels):
        _draw_panel(fig, axes[0, column], axes[1, column], panel, grids, annotate)
    _draw_status(axes[0, -1], axes[1, -1], grids)
    for ax in axes[0]:
        ax.set_xticks(range(n_roles), grids.roles, fontsize=8)
        ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
        ax.set_xticks(np.arange(n_roles + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n_layers + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    step = 1 if n_layers <= 40 else -(-n_layers // 20)
    axes[0, 0].set_yticks(grids.layers[::step], [str(j) for j in grids.layers[::step]], fontsize=7)
    axes[0, 0].set_ylabel("target layer")
    fig.suptitle(_title(report), fontsize=10)
    if grids.hidden_roles:
        fig.supxlabel(f"roles with no computed module, not drawn: {', '.join(grids.hidden_roles)}", fontsize=8)
    return fig


def _draw_panel(fig: Any, ax: Any, bar_ax: Any, panel: _Panel, grids: ReportGrids, annotate: bool) -> None:
    from matplotlib import colormaps, colors
    from matplotlib.patches import Rectangle

    # One fixed 0..1 scale for every panel (1 = good), so pictures of different runs compare.
    cmap, norm = colormaps["viridis"].with_extremes(bad=_NO_VALUE), colors.Normalize(0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(panel.values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_title(f"{panel.title}\n{_median(panel.values)}", fontsize=9)
    bar_ax.set_axis_off()
    cax = bar_ax.inset_axes((0.03, 0.72, 0.94, 0.2))
    bar = fig.colorbar(image, cax=cax, orientation="horizontal")
    bar.set_label(panel.label, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    no_value = ~np.isfinite(panel.values)
    for (row, col), value in np.ndenumerate(panel.values):
        corner = (col - 0.5, row - 0.5)
        if grids.status[row, col] == STATUSES.index("gate"):  # computed, shown, but not written
            ax.add_patch(Rectangle(corner, 1, 1, fill=False, edgecolor=_STATUS_COLOURS[1], linewidth=2.5))
        if no_value[row, col]:
            pattern = ".." if panel.values is grids.similarity and grids.uninformative[row, col] else "///"
            ax.add_patch(Rectangle(corner, 1, 1, fill=False, hatch=pattern, edgecolor=_HATCH, linewidth=0))
        elif annotate:
            r, g, b = colors.to_rgb(cmap(norm(value)))
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6, color=ink)


def _draw_status(ax: Any, legend_ax: Any, grids: ReportGrids) -> None:
    from matplotlib import colors
    from matplotlib.patches import Patch

    ax.imshow(grids.status, cmap=colors.ListedColormap(_STATUS_COLOURS),
              norm=colors.BoundaryNorm(np.arange(len(STATUSES) + 1) - 0.5, len(STATUSES)),
              aspect="auto", interpolation="nearest")  # fmt: skip
    ax.set_title("status\n", fontsize=9)
    handles = [
        Patch(facecolor=_STATUS_COLOURS[i], edgecolor="black", label=_STATUS_LABELS[i])
        for i in sorted(set(grids.status.ravel().tolist()))
    ]
    if (grids.status == STATUSES.index("gate")).any():
        handles.append(Patch(facecolor="none", edgecolor=_STATUS_COLOURS[1], linewidth=2,
                             label="orange frame: gated (value shown, not written)"))  # fmt: skip
    if (~np.isfinite(grids.norm_ratio)).any():
        handles.append(Patch(facecolor=_NO_VALUE, edgecolor=_HATCH, hatch="///", label="no value: not computed"))
    if grids.uninformative.any():
        handles.append(Patch(facecolor=_NO_VALUE, edgecolor=_HATCH, hatch="..",
                             label="φ says nothing: SVD rank ≥ weight dim"))  # fmt: skip
    legend_ax.set_axis_off()
    legend_ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False, borderaxespad=0)


def write_report_plots(output: Path) -> list[Path]:
    """A PNG beside every `crosslora_report.json` that `transfer` wrote under `output`.

    `output` is the adapter folder (one adapter) or the parent of one folder per adapter.
    """
    output = Path(output)
    reports = [output / REPORT_FILE] if (output / REPORT_FILE).is_file() else sorted(output.glob(f"*/{REPORT_FILE}"))
    return [write_report_plot(r.parent, read_json_object(r, OutputError)) for r in reports]
