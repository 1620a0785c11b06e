"""`DistillOptions`: every setting of a distillation run, declared once (each field is one flag of
`python -m crosslora_jax.distill`; so are the init transfer's svd, layer_map and output_dtype)
and validated once (`OptionsError`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from crosslora_jax._errors import OptionsError
from crosslora_jax._options import check_options, nested, option
from crosslora_jax.distillation._objectives import KD_CHOICES, kd_help
from crosslora_jax.transfer import TransferOptions

Init = Literal["cross_lora", "lora_x", "truncate", "zero"]
Learn = Literal["lora", "transform"]
ParamDtype = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """How to distil. `prompts` teacher sequences of `gen_len` sampled tokens are drawn once (plus
    `heldout` more, never trained on); training takes AdamW steps of `batch_size` of them
    (gradient norm clipped). With `early_stopping` (the default) the learning rate warms up, stays
    constant, and is cut when the held-out objective stops improving; training stops on the plateau
    after the last cut (or at the `steps` cap) and keeps the best parameters. Without it: warm-up,
    then cosine decay to 0 over exactly `steps`."""

    init: Init = option("cross_lora", "Data-free transfer to start from (zero: PEFT's own init, B = 0).")
    learn: Learn = option(
        "lora",
        "What is trained: lora (the target's factors) or transform (r_t×r_s maps from the source's singular "
        "subspaces into the target's, the source factors fixed).",
    )
    kd: str = option("auto", kd_help(), choices=KD_CHOICES)  # the objectives: distillation/_objectives.py
    product_weight: float = option(
        0.75, "--kd=product: weight b of the teacher (source + adapter) against the target base in the mix.",
        low=0.0, high=1.0,
    )  # fmt: skip
    sequence_weight: float = option(
        4.0, "--kd=shared|bytes: weight of the cross-entropy on the teacher's text beside the KL (0: KL only).", low=0.0,
    )  # fmt: skip
    # the init transfer's settings; svd, layer_map and output_dtype are flags (the API may set the
    # others); its method is always `init`'s (`truncate` for zero)
    transfer: TransferOptions = nested(TransferOptions, flags=("svd", "layer_map", "output_dtype"))  # noqa: RUF009 (a field specifier, as option)
    prompts: int = option(4000, "Teacher sequences to sample for training.", low=1)
    prompts_file: str | None = option(
        None, "Your own seed prompts: one per line, or JSON lines with a 'prompt' field (*.jsonl). Default: "
        "generic starts (the tokenizer's BOS token, or common first tokens)."
    )  # fmt: skip
    gen_len: int = option(64, "Tokens the teacher samples per sequence.", low=1)
    gen_batch_size: int = option(64, "Sequences the teacher samples at once (KV-cache memory grows with it).", low=1)
    temperature: float = option(1.0, "Sampling temperature (0 = greedy).", low=0.0)
    top_p: float = option(1.0, "Nucleus sampling: sample from the smallest token set of this mass.", low=1e-6, high=1.0)
    steps: int = option(
        5000, "Most optimizer steps: with --early_stopping the run usually stops before (on a plateau); without, "
        "exactly this many.", low=1
    )  # fmt: skip
    batch_size: int = option(16, "Sequences per step.", low=1)
    learning_rate: float = option(
        5e-3, "Peak AdamW learning rate: after the warm-up, constant and cut on plateaus (--early_stopping), or "
        "cosine decay to 0 over --steps.", low=0.0
    )  # fmt: skip
    warmup_steps: int = option(75, "Linear warm-up steps.", low=0)
    early_stopping: bool = option(
        True, "Score the held-out samples every --eval_every steps; cut the learning rate by --lr_decay after "
        "--patience evaluations without an improvement beyond their measured jitter (and --min_delta), stop on "
        "the plateau after --lr_decays cuts, and keep the best parameters (needs --heldout > 0)."
    )  # fmt: skip
    eval_every: int = option(50, "--early_stopping: steps between two held-out evaluations.", low=1)
    patience: int = option(4, "--early_stopping: evaluations without improvement that make a plateau.", low=1)
    min_delta: float = option(
        1e-3, "--early_stopping: smallest relative fall of the held-out value that counts as an improvement "
        "(the measured jitter of the evaluations, ×2, counts too).", low=0.0
    )  # fmt: skip
    lr_decay: float = option(0.3, "--early_stopping: learning-rate factor on a plateau.", low=1e-6, high=1.0)
    lr_decays: int = option(2, "--early_stopping: learning-rate cuts before a plateau stops training.", low=0)
    weight_decay: float = option(0.0, "AdamW weight decay.", low=0.0)
    clip_norm: float = option(1.0, "Clip the global gradient norm to this.", low=1e-12)
    anchor_weight: float = option(
        1.0, "Weight of KL(target base ‖ student) on the target's own samples: holds the student near the "
        "target outside the adapter's domain, at the cost of one more sampling pass (0: off).", low=0.0
    )  # fmt: skip
    heldout: int = option(
        128, "Extra teacher (and anchor) sequences, never trained on: the before/after figures and --early_stopping.",
        low=0,
    )  # fmt: skip
    seed: int = option(0, "Seed of sampling, batching and init (a seed repeats its result).")
    log_every: int = option(10, "A progress line every this many steps.", low=1)
    checkpoint_every: int = option(100, "With --cache_dir: checkpoint every this many steps.", low=1)
    checkpoint_minutes: float = option(
        5.0, "With --cache_dir: also checkpoint when this many minutes have passed since the last checkpoint "
        "(checked at each progress line; 0: by steps only).", low=0.0
    )  # fmt: skip
    param_dtype: ParamDtype = option(
        "float32", "dtype the frozen base weights are kept in on the devices: bfloat16 halves their memory (matmuls "
        "still accumulate in float32; the adapter, loss and optimizer state stay float32)."
    )  # fmt: skip
    remat: bool = option(
        True, "Activation checkpointing: recompute each layer of the student in the backward pass instead of "
        "keeping its activations (memory of one layer, about a third more compute)."
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_options(self)
        method = "truncate" if self.init == "zero" else self.init
        if self.transfer.method != method:
            object.__setattr__(self, "transfer", dataclasses.replace(self.transfer, method=method))
        if self.learning_rate <= 0:
            raise OptionsError("--learning_rate", f"must be positive, got {self.learning_rate}")
        if self.early_stopping and self.heldout == 0:
            raise OptionsError("--heldout", "must be positive with --early_stopping (it scores the held-out samples)")
        if self.batch_size > self.prompts:
            raise OptionsError("--batch_size", f"{self.batch_size} exceeds --prompts={self.prompts}")

    def to_json(self) -> dict[str, Any]:
        """The report's `settings`: every field, with the init transfer's flags (svd, layer_map,
        output_dtype) where they stood before they were one field (the layout reports have had)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name == "transfer":
                out |= {"svd": dataclasses.asdict(self.transfer.svd), "layer_map": self.transfer.layer_map}
            else:
                out[field.name] = getattr(self, field.name)
        return {**out, "output_dtype": self.transfer.output_dtype}
