"""The transfer report: `report.json` in each output folder and a readable table for the log."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_FILE = "crosslora_report.json"

_COLUMNS = (
    ("module", "{}", 34),
    ("src", "{}", 4),
    ("status", "{}", 11),
    ("E_src", "{:.2f}", 5),
    ("E_tgt", "{:.2f}", 5),
    ("phi_U", "{:.3f}", 5),
    ("phi_V", "{:.3f}", 5),
    ("chance", "{:.3f}", 6),
    ("|dWt|/|dWs|", "{:.3f}", 11),
)


def write_report(folder: Path, report: Mapping[str, Any]) -> None:
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


def _cells(m: Mapping[str, Any]) -> list[Any]:
    chance = None if "chance_u" not in m else max(m["chance_u"], m["chance_v"])
    return [m["module"], m["source_layer"], m["status"], m.get("energy_source"), m.get("energy_target"),
            m.get("phi_u"), m.get("phi_v"), chance, m.get("norm_ratio")]  # fmt: skip


def format_table(modules: Sequence[Mapping[str, Any]]) -> str:
    """One line per target module; '-' where a value does not apply (skipped modules)."""
    header = " ".join(name.rjust(width) if i else name.ljust(width) for i, (name, _, width) in enumerate(_COLUMNS))
    lines = [header]
    for m in modules:
        cells = []
        for i, ((_, fmt, width), value) in enumerate(zip(_COLUMNS, _cells(m), strict=True)):
            text = "-" if value is None else fmt.format(value)
            cells.append(text.ljust(width) if i == 0 else text.rjust(width))
        lines.append(" ".join(cells))
    return "\n".join(lines)
