"""`DistillOptions`: every setting of a distillation run, validated once (`OptionsError`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from crosslora_jax._errors import OptionsError
from crosslora_jax.io.dtypes import NUMPY_DTYPES
from crosslora_jax.ops.distill import OBJECTIVES
from crosslora_jax.ops.svd import SvdSettings
from crosslora_jax.ops.transfer import METHODS

INITS: tuple[str, ...] = (*METHODS, "zero")
LEARN: tuple[str, ...] = ("lora", "transform")


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """How to distil; the `distill` command's flags map onto these fields one to one.

    `prompts` teacher sequences of `gen_len` sampled tokens each are drawn once (plus
    `heldout` more for the before/after figures); training takes `steps` AdamW steps of
    `batch_size` of them (warm-up then cosine decay, gradient norm clipped at `clip_norm`).
    `anchor_weight` > 0 adds KL(target base ‖ student) on the target base's own samples, which
    holds the student near what the target already does outside the adapter's domain.
    """

    init: str = "cross_lora"
    learn: str = "lora"
    kd: str = "full"
    svd: SvdSettings = dataclasses.field(default_factory=SvdSettings)
    layer_map: str = "auto"
    prompts: int = 1024
    prompts_file: Path | None = None
    gen_len: int = 64
    gen_batch_size: int = 64  # sequences sampled at once (KV cache: L × this × (P + gen_len) × KV × hd × 2)
    temperature: float = 1.0
    top_p: float = 1.0
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    anchor_weight: float = 0.0
    heldout: int = 64
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    output_dtype: str = "auto"

    def __post_init__(self) -> None:
        choices = {"init": INITS, "learn": LEARN, "kd": OBJECTIVES, "layer_map": ("auto", "index", "linear")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise OptionsError(f"--{name}", f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        positive = ("prompts", "gen_len", "gen_batch_size", "steps", "batch_size", "log_every", "checkpoint_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise OptionsError(f"--{name}", f"must be positive, got {getattr(self, name)}")
        for name in ("heldout", "warmup_steps"):
            if getattr(self, name) < 0:
                raise OptionsError(f"--{name}", f"must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise OptionsError("--learning_rate", f"must be positive, got {self.learning_rate}")
        if self.temperature < 0:
            raise OptionsError("--temperature", f"must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise OptionsError("--top_p", f"must be in (0, 1], got {self.top_p}")
        if self.weight_decay < 0 or self.clip_norm <= 0 or self.anchor_weight < 0:
            raise OptionsError("--weight_decay/--clip_norm/--anchor_weight", "must be >= 0 (clip_norm > 0)")
        if self.output_dtype != "auto" and self.output_dtype not in NUMPY_DTYPES:
            raise OptionsError("--output_dtype", f"unknown dtype {self.output_dtype!r}")
        if self.batch_size > self.prompts:
            raise OptionsError("--batch_size", f"{self.batch_size} exceeds --prompts={self.prompts}")
