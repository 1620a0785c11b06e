"""`define_flags_from`: each option type's fields become flags with the type's own defaults,
allowed values and help, and the parsed flags build the option type back."""

from __future__ import annotations

import dataclasses

import pytest
from absl import flags

from crosslora_jax import OptionsError, SvdSettings, TransferOptions
from crosslora_jax.cli._common import define_flags_from
from crosslora_jax.eval import EvalOptions

# Every option and its flag, written out here independently of the metadata that declares them.
TRANSFER_FLAGS = {"method": "method", "svd_rank": "svd.rank", "svd": "svd.engine", "svd_oversample": "svd.oversample",
                  "svd_power_iters": "svd.power_iters", "svd_seed": "svd.seed", "layer_map": "layer_map",
                  "min_similarity": "min_similarity", "output_dtype": "output_dtype",
                  "layers_per_chunk": "layers_per_chunk", "energy_warning": "energy_warning"}  # fmt: skip


def _get(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _define(options_type: type, **kwargs):
    values = flags.FlagValues()
    build = define_flags_from(options_type, "some.command", flag_values=values, **kwargs)
    return values, build


def test_transfer_options_become_one_flag_each_with_the_types_defaults() -> None:
    values, build = _define(TransferOptions)
    assert set(values) == set(TRANSFER_FLAGS)
    assert {f.name for f in values.get_flags_for_module("some.command")} == set(TRANSFER_FLAGS)
    defaults = TransferOptions()
    for name, path in TRANSFER_FLAGS.items():
        assert values[name].default == _get(defaults, path), name
        assert values[name].help, name
    assert values["method"].parser.enum_values == ["cross_lora", "lora_x", "truncate"]
    assert values["svd"].parser.enum_values == ["gram", "exact", "randomized"]
    assert values["layer_map"].parser.enum_values == ["auto", "index", "linear"]
    # The flag offers what PEFT adapters are trained in; the API also writes float64.
    assert values["output_dtype"].parser.enum_values == ["auto", "float32", "bfloat16", "float16"]
    assert TransferOptions(output_dtype="float64").output_dtype == "float64"
    values(["prog"])
    assert build() == defaults


def test_parsed_flags_build_the_options() -> None:
    values, build = _define(TransferOptions)
    values(["prog", "--method=lora_x", "--svd_rank=12", "--svd=exact", "--min_similarity=0.5", "--layers_per_chunk=3"])
    assert build() == TransferOptions(method="lora_x", svd=SvdSettings(rank=12, engine="exact"), min_similarity=0.5,
                                      layers_per_chunk=3)  # fmt: skip
    values(["prog", "--svd_rank=0"])
    with pytest.raises(OptionsError, match="--svd_rank"):
        build()


def test_a_command_can_offer_some_options_with_its_own_defaults() -> None:
    values, build = _define(TransferOptions, only=("method", "svd_rank"), defaults={"svd_rank": 24})
    assert set(values) == {"method", "svd_rank"} and values["svd_rank"].default == 24
    values(["prog", "--method=truncate"])
    assert build() == TransferOptions(method="truncate", svd=SvdSettings(rank=24))
    with pytest.raises(ValueError, match="svd_rnak"):  # a typo is not silently ignored
        _define(TransferOptions, only=("svd_rnak",))


def test_an_optional_number_is_unset_by_default() -> None:
    values, build = _define(EvalOptions)
    assert set(values) == {f.name for f in dataclasses.fields(EvalOptions)}
    values(["prog"])
    assert build() == EvalOptions() and build().max_length is None
    values(["prog", "--max_length=64", "--task_format=text"])
    assert build() == EvalOptions(task_format="text", max_length=64)


@pytest.mark.parametrize(
    ("make", "flag"),
    [(lambda: SvdSettings(engine="qr"), "--svd"), (lambda: SvdSettings(oversample=-1), "--svd_oversample"),
     (lambda: SvdSettings(rank=0), "--svd_rank"), (lambda: EvalOptions(batch_size=0), "--batch_size"),
     (lambda: EvalOptions(task_format="csv"), "--task_format")],
)  # fmt: skip
def test_every_option_type_raises_options_error_naming_the_flag(make, flag) -> None:
    with pytest.raises(OptionsError, match=f"^{flag}: "):
        make()


def test_distill_takes_only_the_init_transfers_flags_it_names() -> None:
    """`DistillOptions.transfer` (a `TransferOptions`): its svd, layer_map and output_dtype are
    distill's flags, under the transfer's names; its method comes from --init, never a flag."""
    from crosslora_jax.distillation import DistillOptions

    values, build = _define(DistillOptions)
    transfer_flags = {name for name in TRANSFER_FLAGS if name in values}
    assert transfer_flags == {"svd_rank", "svd", "svd_oversample", "svd_power_iters", "svd_seed", "layer_map",
                              "output_dtype"}  # fmt: skip
    values(["prog", "--init=zero", "--svd_rank=12", "--layer_map=index", "--output_dtype=bfloat16", "--steps=7"])
    options = build()
    assert options.transfer == TransferOptions(method="truncate", svd=SvdSettings(rank=12), layer_map="index",
                                               output_dtype="bfloat16")  # fmt: skip
    assert options.steps == 7 and options.init == "zero"
    assert DistillOptions(init="lora_x", transfer=TransferOptions(min_similarity=0.5)).transfer.method == "lora_x"
    # the report's settings keep the layout they had when these were DistillOptions' own fields
    settings = options.to_json()
    assert list(settings)[5:7] == ["svd", "layer_map"] and list(settings)[-1] == "output_dtype"
    assert settings["svd"] == dataclasses.asdict(SvdSettings(rank=12)) and "transfer" not in settings
