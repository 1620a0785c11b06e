"""Each option declared once: a dataclass field carries its default, help, flag name, allowed
values and range.

    rank: int = option(320, "Rank r of the truncated SVD.", flag="svd_rank", low=1)

`check_options(self)` in the dataclass's `__post_init__` validates every such field (one
`OptionsError` naming the flag); `cli._common.define_flags_from` turns the same fields into absl
flags. A field typed `Literal[...]` takes its allowed values from the type, so the names of
methods, engines and layer maps are written once, in their `Literal`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Sequence
from typing import Any, Literal

from crosslora_jax._errors import OptionsError

_KEY = "crosslora_option"
_NESTED_KEY = "crosslora_nested_flags"


@dataclasses.dataclass(frozen=True)
class Option:
    """What a field says about itself besides its type and default."""

    help: str
    flag: str | None = None  # the flag's name; the field's own name when None
    choices: tuple[str, ...] | None = None  # allowed values of a field not typed Literal
    flag_choices: tuple[str, ...] | None = None  # what the flag offers, where fewer than the API takes
    low: float | None = None  # inclusive bounds of a number (None: unbounded)
    high: float | None = None


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: Sequence[str] | None = None,
    flag_choices: Sequence[str] | None = None,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """A dataclass field with `default` and its `Option` metadata."""
    meta = Option(help, flag, None if choices is None else tuple(choices),
                  None if flag_choices is None else tuple(flag_choices), low, high)  # fmt: skip
    return dataclasses.field(default=default, metadata={_KEY: meta})


def nested(cls: type, *, flags: Sequence[str]) -> Any:
    """A field holding another options dataclass (default `cls()`) of which only the fields named
    in `flags` are options of the holder (its flags); the others keep their defaults there and
    are the API's to set."""
    return dataclasses.field(default_factory=cls, metadata={_NESTED_KEY: tuple(flags)})


def nested_flags(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The fields of a `nested` field's options that are flags; None: all of them."""
    return field.metadata.get(_NESTED_KEY)


def option_of(field: dataclasses.Field) -> Option | None:
    return field.metadata.get(_KEY)


def flag_name(field: dataclasses.Field) -> str:
    meta = option_of(field)
    return (meta.flag if meta is not None else None) or field.name


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (its module uses postponed annotations)."""
    return typing.get_type_hints(cls)


def allowed_values(cls: type, field: dataclasses.Field) -> tuple[str, ...] | None:
    """The values a field accepts: its Literal's, else its declared choices, else None (any)."""
    hint = field_types(cls)[field.name]
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    meta = option_of(field)
    return None if meta is None else meta.choices


def check_choice(flag: str, value: object, allowed: Sequence[object]) -> None:
    """`OptionsError` naming `--flag` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise OptionsError(f"--{flag}", f"unknown value {value!r}; choose one of {', '.join(map(str, allowed))}")


def check_options(instance: object) -> None:
    """Validate every `option` field of a dataclass instance: allowed values and bounds."""
    for field in dataclasses.fields(instance):  # type: ignore[arg-type]
        meta = option_of(field)
        if meta is None:
            continue
        value, flag = getattr(instance, field.name), flag_name(field)
        allowed = allowed_values(type(instance), field)
        if allowed is not None:
            check_choice(flag, value, allowed)
        if value is None:  # an optional number left unset
            continue
        if meta.low is not None and meta.high is not None and not meta.low <= value <= meta.high:
            raise OptionsError(f"--{flag}", f"must be in [{meta.low:g}, {meta.high:g}], got {value}")
        if meta.low is not None and value < meta.low:
            raise OptionsError(f"--{flag}", f"must be at least {meta.low:g}, got {value}")
        if meta.high is not None and value > meta.high:
            raise OptionsError(f"--{flag}", f"must be at most {meta.high:g}, got {value}")
