"""`TransferOptions`: how to transfer, each field (and each of `svd`'s) one flag of the CLI."""

from __future__ import annotations

import dataclasses

from crosslora_jax._options import check_options, option
from crosslora_jax.io.dtypes import NUMPY_DTYPES, OUTPUT_CHOICES
from crosslora_jax.ops import SvdSettings
from crosslora_jax.ops.layer_map import LayerMapKind
from crosslora_jax.ops.transfer import Method


@dataclasses.dataclass(frozen=True)
class TransferOptions:
    """How to transfer; each field (and each of `svd`'s) is one flag of the CLI."""

    method: Method = option(
        "cross_lora",
        "Transfer method: cross_lora (align the source's subspaces to the target's, then project), "
        "lora_x (project onto the target's subspaces), truncate (zero-pad/crop: the reference code's "
        "effective behaviour). Equations in docs/method.md.",
    )
    svd: SvdSettings = dataclasses.field(default_factory=SvdSettings)
    layer_map: LayerMapKind = option(
        "auto",
        "Target→source layer map: index (layer j from layer j), linear (spread evenly over the source's "
        "depth), auto (index when the depths are equal, else linear).",
    )
    min_similarity: float = option(0.0, "Transfer a module only if min(φ_U, φ_V) reaches this.", low=0.0, high=1.0)
    # The API may write float64; the flag offers what PEFT adapters are trained in.
    output_dtype: str = option("auto", "dtype of the written factors.", choices=("auto", *NUMPY_DTYPES),
                               flag_choices=("auto", *OUTPUT_CHOICES))  # fmt: skip
    layers_per_chunk: int = option(8, "Layers of one role processed (and held) at once.", low=1)
    energy_warning: float = option(0.25, "Warn when rank r captures less weight energy than this.")

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def needs_subspaces(self) -> bool:
        """`truncate` uses no subspace unless the similarity gate must score modules."""
        return self.method != "truncate" or self.min_similarity > 0
