"""What the student learns: LoRA factors on the target (`lora`) or the maps of `transform`.

Legend: L target layers, m out, n in, k the role's largest LoRA rank (smaller modules are
zero-padded: a zero row of A with a zero column of B gets zero gradient, so padding stays
inert), r_s / r_t effective SVD ranks.

Per role the student keeps every target layer; layers the init transfer did not write have
scale 0, so they change nothing and are not written out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crosslora_jax.eval import Lora
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.peft_adapter import Factors, LoraAdapter, LoraModule
from crosslora_jax.io.stacks import LoraStack, adapter_stack, stack_factors
from crosslora_jax.ops.distill import transform_factors, transform_init
from crosslora_jax.ops.svd import Subspace

Trainable = dict[str, dict[str, jax.Array]]  # role -> {"a", "b"} or {"m_u", "m_v"}
Fixed = dict[str, dict[str, Any]]  # role -> {"scale"} (+ transform's "a_proj", "b_proj", "ut", "vt"): arrays


@dataclasses.dataclass(frozen=True)
class Student:
    """The trainable parameters, what stays fixed, and which target modules are written."""

    learn: str
    trainable: Trainable
    fixed: Fixed
    written: tuple[LoraModule, ...]


def source_lora(adapter: LoraAdapter, source: ModelConfig) -> Lora:
    """The source adapter as the model's LoRA side path (the teacher): role -> stacks over all
    source layers, zero where a layer has no module."""
    every = range(source.num_layers)
    return {role: jax.tree.map(jnp.asarray, adapter_stack(adapter, role, every)) for role in adapter.roles()}


def _init_stack(
    role: str,
    target: ModelConfig,
    written: Sequence[LoraModule],
    factors: Mapping[LoraModule, Factors],
    adapter: LoraAdapter,
    zero: bool,
    rng: np.random.Generator,
) -> LoraStack:
    """The init transfer's factors of one role over every target layer (A [L, k, n], B [L, m, k])."""
    n = target.shapes[role][1]
    mods = [w for w in written if w.role == role]
    start = {}
    for w in mods:
        fa, fb = factors[w]
        if zero:  # PEFT's own init: B = 0, A uniform with kaiming's bound for a = √5
            fa, fb = rng.uniform(-1, 1, fa.shape) / math.sqrt(n), np.zeros_like(fb)
        start[w] = (fa, fb)
    by_layer = {w.layer: w for w in mods}
    return stack_factors(by_layer, start.__getitem__, adapter.scale, range(target.num_layers))


def build_student(
    learn: str,
    zero: bool,
    adapter: LoraAdapter,
    target: ModelConfig,
    written: Sequence[LoraModule],
    factors: Mapping[LoraModule, Factors],
    target_to_source: Sequence[int | None],
    subspaces: Mapping[str, tuple[Subspace, Subspace]] | None,
    seed: int,
) -> Student:
    """The student at step 0: it reproduces the init transfer (`zero`: PEFT's init for `lora`,
    M_U = 0 for `transform`). `subspaces[role]` = (source at every source layer, target at every
    target layer), needed by `transform` only."""
    rng = np.random.default_rng(seed)
    trainable: Trainable = {}
    fixed: Fixed = {}
    for role in sorted({w.role for w in written}):
        init = _init_stack(role, target, written, factors, adapter, zero and learn == "lora", rng)
        a, b, scale = init.a, init.b, init.scale
        fixed[role] = {"scale": jnp.asarray(scale)}
        if learn == "lora":
            trainable[role] = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
            continue
        assert subspaces is not None
        src, tgt = subspaces[role]
        source_rows = adapter_stack(adapter, role, target_to_source, range(target.num_layers), a.shape[1])
        a_s, b_s = source_rows.a, source_rows.b  # [L_t, k, n_s], [L_t, m_s, k]: zero where unmapped
        rows = np.asarray([0 if i is None else i for i in target_to_source])
        a_proj = jnp.asarray(a_s) @ jnp.asarray(src.v[rows])  # [L, k, r_s]
        b_proj = jnp.swapaxes(jnp.asarray(src.u[rows]), 1, 2) @ jnp.asarray(b_s)  # [L, r_s, k]
        ut, vt = jnp.asarray(tgt.u), jnp.asarray(tgt.v)
        m_u, m_v = jax.vmap(transform_init)(a_proj, b_proj, ut, vt, jnp.asarray(a), jnp.asarray(b))
        if zero:
            m_u = jnp.zeros_like(m_u)
        trainable[role] = {"m_u": m_u, "m_v": m_v}
        fixed[role].update(a_proj=a_proj, b_proj=b_proj, ut=ut, vt=vt)
    # Fixed tensors go back to the host (transform's subspace stacks are as large as a few layers):
    # the caller places them once, sharded, instead of a second copy staying on the first device.
    return Student(learn, trainable, jax.device_get(fixed), tuple(written))


def student_lora(learn: str, trainable: Trainable, fixed: Fixed) -> Lora:
    """The target model's LoRA side path for the current parameters (jittable)."""
    out = {}
    for role, params in trainable.items():
        if learn == "lora":
            a, b = params["a"], params["b"]
        else:
            f = fixed[role]
            a, b = transform_factors(f["a_proj"], f["b_proj"], f["ut"], f["vt"], params["m_u"], params["m_v"])
        out[role] = LoraStack(a, b, fixed[role]["scale"], tuple(range(a.shape[0])))
    return out


def written_factors(student: Student, trainable: Trainable) -> dict[LoraModule, Factors]:
    """Target module -> (A [k, n], B [m, k]) of every written module (one per role; fused modules
    are fused when written), trimmed to its own rank. `trainable` may be replicated over a mesh of
    several processes: it is fetched first."""
    lora: Any = jax.device_get(student_lora(student.learn, jax.device_get(trainable), student.fixed))
    return {
        w: (np.asarray(lora[w.role].a[w.layer, : w.rank]), np.asarray(lora[w.role].b[w.layer, :, : w.rank]))
        for w in student.written
    }
