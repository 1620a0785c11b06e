"""`P:O[,P:O...]` (power iterations : oversampling) for the tools' `--randomized` flags."""

from __future__ import annotations

import argparse


def randomized_settings(text: str) -> list[tuple[int, int]]:
    """argparse `type=`: the (power_iters, oversample) pairs of `text`, in order."""
    try:
        pairs = [tuple(int(x) for x in item.split(":")) for item in text.split(",") if item]
    except ValueError:
        pairs = [()]
    if any(len(p) != 2 or min(p) < 0 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected P:O[,P:O...] with non-negative integers, got {text!r}")
    return pairs  # type: ignore[return-value]
