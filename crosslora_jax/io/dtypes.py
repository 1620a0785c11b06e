"""The float dtypes crosslora_jax reads and writes: one row each, every other table derives from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np


class FloatDtype(NamedTuple):
    name: str  # what options, configs and the API call it
    tag: str  # its safetensors header tag
    numpy: Any  # the NumPy scalar type (bfloat16 through ml_dtypes)
    output_choice: bool = True  # offered by --output_dtype (PEFT adapters are not trained in float64)


FLOAT_DTYPES: tuple[FloatDtype, ...] = (
    FloatDtype("float32", "F32", np.float32),
    FloatDtype("bfloat16", "BF16", ml_dtypes.bfloat16),
    FloatDtype("float16", "F16", np.float16),
    FloatDtype("float64", "F64", np.float64, output_choice=False),
)
NUMPY_DTYPES: Mapping[str, Any] = {d.name: d.numpy for d in FLOAT_DTYPES}
BY_TAG: Mapping[str, FloatDtype] = {d.tag: d for d in FLOAT_DTYPES}
OUTPUT_CHOICES: tuple[str, ...] = tuple(d.name for d in FLOAT_DTYPES if d.output_choice)
