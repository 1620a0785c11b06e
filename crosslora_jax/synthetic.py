"""Deterministic synthetic HF checkpoints and PEFT adapters, written with NumPy alone.

Projection weights are W = U diag(σ) Vᵀ with Haar-random U, V and a power-law spectrum
σ_i = (1 + i/knee)^(-decay), the shape measured on real LLM projections (a few large
directions, then a slow decay; see WORKSPACE.md). Used by the demo, the tests and `tools/`.
The files are complete HF checkpoints (embeddings, norms, head) that transformers can load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from crosslora_jax.arch import ARCHITECTURES, ROLES, ArchSpec, model_dims, role_shapes, tensor_shape
from crosslora_jax.io.dtypes import NUMPY_DTYPES
from crosslora_jax.io.peft_adapter import CONFIG_FILE as ADAPTER_CONFIG
from crosslora_jax.io.peft_adapter import KEY_PREFIX, WEIGHTS_FILE
from crosslora_jax.io.tokenizer import byte_level_alphabet


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """σ_i = scale · (1 + i/knee)^(-decay), with `knee` a fraction of min(m, n)."""

    decay: float = 0.6
    knee: float = 0.02
    scale: float = 1.0

    def values(self, count: int) -> np.ndarray:
        knee = max(1.0, self.knee * count)
        return self.scale * (1.0 + np.arange(count) / knee) ** (-self.decay)


def model_config(
    model_type: str,
    *,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    layers: int,
    head_dim: int | None = None,
    vocab: int = 256,
) -> dict[str, Any]:
    """A config.json dict transformers accepts for `model_type` at these sizes."""
    arch = ARCHITECTURES[model_type]
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [arch.causal_lm],
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "head_dim": head_dim or hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": arch.default_tied,
        "torch_dtype": "float32",
        "attention_bias": False,
    }
    if arch.query_pre_attn_scalar:  # transformers' default (256) is not head_dim at these sizes
        config["query_pre_attn_scalar"] = config["head_dim"]
    config.update(arch.fixture_config)
    return config


def flat_bulk_weight(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """A float32 [m, n] weight with a flat random-matrix bulk, like trained projections: Gaussian
    entries / √n times a slowly varying column scale 1 + 4/(1 + j/32). Its gaps at r = 320 are
    ~1e-3 relative or less: the hard case for truncated SVDs (issue 22's recipe)."""
    return (rng.standard_normal((m, n)) / np.sqrt(n) * _column_scale(n)).astype(np.float32)


def _column_scale(n: int) -> np.ndarray:
    return 1.0 + 4.0 / (1.0 + np.arange(n) / 32.0)


def _haar(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def spectral_weight(rng: np.random.Generator, m: int, n: int, spectrum: Spectrum) -> np.ndarray:
    """A float32 [m, n] matrix with singular values `spectrum.values(min(m, n))`."""
    r = min(m, n)
    u, v = _haar(rng, m, r), _haar(rng, n, r)
    return ((u * spectrum.values(r)) @ v.T).astype(np.float32)


def spectral_weight_on_device(
    key: Any, m: int, n: int, spectrum: Spectrum | None, dtype: str = "float32"
) -> np.ndarray:
    """Like `spectral_weight` (or `flat_bulk_weight` for spectrum None), drawn with JAX on the
    default device (a GPU makes 8B-sized checkpoints in seconds); a different random stream, the
    same distribution."""
    return np.asarray(_on_device_weight(m, n, spectrum, dtype)(key))


@functools.cache
def _on_device_weight(m: int, n: int, spectrum: Spectrum | None, dtype: str) -> Any:
    import jax
    import jax.numpy as jnp

    if spectrum is None:  # flat bulk (`flat_bulk_weight`'s distribution)
        scale = jnp.asarray(_column_scale(n) / np.sqrt(n), jnp.float32)
        return jax.jit(lambda key: (jax.random.normal(key, (m, n)) * scale).astype(NUMPY_DTYPES[dtype]))
    r = min(m, n)
    sigma = jnp.asarray(spectrum.values(r), jnp.float32)

    @jax.jit
    def draw(key: jax.Array) -> jax.Array:
        ku, kv = jax.random.split(key)
        u = jnp.linalg.qr(jax.random.normal(ku, (m, r)))[0]
        v = jnp.linalg.qr(jax.random.normal(kv, (n, r)))[0]
        w = jnp.matmul(u * sigma, v.T, precision=jax.lax.Precision.HIGHEST)
        return w.astype(NUMPY_DTYPES[dtype])  # cast on the device: host bf16 casts are slow

    return draw


def write_model_by_layer(
    folder: Path,
    config: Mapping[str, Any],
    *,
    seed: int,
    dtype: str = "bfloat16",
    spectrum: Spectrum | None = Spectrum(),
) -> Path:
    """A sharded checkpoint written one layer at a time (one shard per layer, plus one for the
    rest), projections drawn on the JAX device: for models too large to hold in memory twice.
    `spectrum` None draws flat-bulk weights (`flat_bulk_weight`)."""
    import jax

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype}, indent=2))
    arch = ARCHITECTURES[config["model_type"]]
    shapes = role_shapes(config)
    layers = config["num_hidden_layers"]
    rest = model_tensors(config, seed=seed, roles=())
    shards = layers + 1
    key = jax.random.key(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for shard in range(shards):
        file_name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        if shard < layers:
            prefix = arch.layer_prefix.format(layer=shard) + "."
            part = {k: v for k, v in rest.items() if k.startswith(prefix)}
            drawn: dict[str, dict[str, np.ndarray]] = {}
            for role in ROLES:
                key, sub = jax.random.split(key)
                weight = spectral_weight_on_device(sub, *shapes[role], spectrum, dtype)
                drawn.setdefault(arch.weight_name(role, shard), {})[role] = weight
            part.update({name: _stack_rows(arch, name, parts) for name, parts in drawn.items()})
        else:
            part = {k: v for k, v in rest.items() if k not in weight_map}
        cast = {k: np.ascontiguousarray(v.astype(NUMPY_DTYPES[dtype])) for k, v in part.items()}
        save_file(cast, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(cast, file_name))
        total += sum(v.nbytes for v in cast.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def model_tensors(
    config: Mapping[str, Any], *, seed: int, spectrum: Spectrum = Spectrum(), roles: Sequence[str] = ROLES
) -> dict[str, np.ndarray]:
    """Every tensor of a synthetic checkpoint for `config`, float32: projections of `roles` with
    `spectrum` (a fused module's roles drawn one by one and stacked in row order), embeddings and
    head N(0, 0.02²), norm weights 1, biases 0."""
    rng = np.random.default_rng(seed)
    arch = ARCHITECTURES[config["model_type"]]
    dims, vocab = model_dims(config), config["vocab_size"]
    names = arch.tensor_names(config["num_hidden_layers"], tied=arch.tied(config), biases=arch.biases(config))
    blocks: dict[str, dict[str, np.ndarray]] = {}  # tensor name -> canonical key -> its rows
    for (key, _), name in names.items():  # table order: embed, head, then each layer's roles: seeded draws
        shape = tensor_shape(key, dims, vocab)
        if key in ("embed", "lm_head"):
            value = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        elif key in ROLES:
            if key not in roles:
                continue
            value = spectral_weight(rng, *shape, spectrum)
        elif key.endswith("_bias"):
            value = np.zeros(shape, np.float32)
        else:
            value = np.ones(shape, np.float32)
        blocks.setdefault(name, {})[key] = value
    return {name: _stack_rows(arch, name, parts) for name, parts in blocks.items()}


def _stack_rows(arch: ArchSpec, name: str, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    """One tensor from its roles' blocks (canonical keys: role or "<role>_bias"), in row order."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    order = arch.fused_roles(next(iter(parts)).removesuffix("_bias"))
    missing = [key for key in parts if key.removesuffix("_bias") not in order]
    if missing or len(parts) != len(order):
        raise ValueError(f"{name}: draw all of the fused roles {order} or none of them")
    by_role = {key.removesuffix("_bias"): value for key, value in parts.items()}
    return np.concatenate([by_role[role] for role in order])


def write_model(
    folder: Path,
    config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
    shards: int = 1,
) -> Path:
    """Write `config.json` and `model.safetensors`, or `shards` files plus an index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype}, indent=2))
    cast = {k: np.ascontiguousarray(v.astype(NUMPY_DTYPES[dtype])) for k, v in tensors.items()}
    if shards == 1:
        save_file(cast, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    names = sorted(cast)
    weight_map = {}
    for s in range(shards):
        file_name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: cast[n] for n in names[s::shards]}
        save_file(part, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file_name))
    total = sum(v.nbytes for v in cast.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_adapter(
    folder: Path,
    config: Mapping[str, Any],
    *,
    seed: int,
    roles: Sequence[str] = ("q", "v"),
    rank: int = 8,
    alpha: float = 16,
    dtype: str = "float32",
    layers: Sequence[int] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """A PEFT LoRA adapter for a model with `config`, with nonzero A and B (as after training); a
    fused module (phi3's qkv_proj) is adapted whole when any of its roles is listed."""
    rng = np.random.default_rng(seed)
    arch = ARCHITECTURES[config["model_type"]]
    shapes = role_shapes(config)
    layers = range(config["num_hidden_layers"]) if layers is None else layers
    tensors = {}
    modules = {arch.role_modules[role]: role for role in roles}  # a fused module once, whole
    for layer in layers:
        for role in modules.values():
            m, n = sum(shapes[r][0] for r in arch.fused_roles(role)), shapes[role][1]
            path = arch.module_path(role, layer)
            a = rng.standard_normal((rank, n)) / np.sqrt(n)
            b = rng.standard_normal((m, rank)) * 0.05
            tensors[f"{KEY_PREFIX}{path}.lora_A.weight"] = a.astype(NUMPY_DTYPES[dtype])
            tensors[f"{KEY_PREFIX}{path}.lora_B.weight"] = b.astype(NUMPY_DTYPES[dtype])
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    leaf = sorted({arch.role_modules[r].rsplit(".", 1)[-1] for r in roles})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": leaf,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "base_model_name_or_path": str(folder),
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    if layers is not None and list(layers) != list(range(config["num_hidden_layers"])):
        adapter_config["layers_to_transform"] = list(layers)
    adapter_config.update(extra_config or {})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
    return folder


# Tokenizer fixtures. "bytes": token id = byte value, 256 ids, no special tokens (what
# tools/replication.py assumes). "bpe": another vocabulary over the same texts: <s>, </s>, <pad>
# at 0-2, the 256 bytes at 3-258, then one token per merge below (GPT-2-style byte-level BPE).
_BPE_SPECIALS = ("<s>", "</s>", "<pad>")
_BPE_MERGES = (
    (" ", "t"), ("h", "e"), (" t", "he"), ("i", "n"), (" ", "a"), ("e", "r"), ("o", "n"), (" ", "s"),
    ("r", "e"), ("a", "t"), ("e", "n"), (" ", "i"), (" i", "n"), ("o", "r"), ("e", "s"), (" ", "o"),
    (" o", "f"), ("d", "e"), ("de", "f"), ("s", "e"), ("l", "f"), ("se", "lf"), ("in", "g"), ("i", "m"),
    ("p", "o"), ("im", "po"), ("r", "t"), ("impo", "rt"), (" ", "="), ("\n", " "), ("\n ", " "),
)  # fmt: skip
_CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


def tokenizer_vocab_size(kind: str) -> int:
    """Ids the `kind` fixture tokenizer uses: the smallest `vocab=` for `model_config`."""
    return {"bytes": 256, "bpe": len(_BPE_SPECIALS) + 256 + len(_BPE_MERGES)}[kind]


def write_tokenizer(folder: Path, kind: str = "bytes") -> Path:
    """Write tokenizer.json and tokenizer_config.json of the `kind` fixture ("bytes" or "bpe",
    above) into `folder`, built with the `tokenizers` library. "bpe" has bos <s>, eos </s> and a
    chat template (data for readers; nothing renders it)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    byte_char = {b: c for c, b in byte_level_alphabet().items()}
    if kind == "bytes":
        vocab = {byte_char[b]: b for b in range(256)}
        merges: list[tuple[str, str]] = []
        config: dict[str, Any] = {}
    elif kind == "bpe":
        vocab = {s: i for i, s in enumerate(_BPE_SPECIALS)}
        vocab.update({byte_char[b]: len(_BPE_SPECIALS) + b for b in range(256)})
        merges = [(_as_byte_chars(x, byte_char), _as_byte_chars(y, byte_char)) for x, y in _BPE_MERGES]
        for x, y in merges:
            vocab[x + y] = len(vocab)
        config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": _CHAT_TEMPLATE}
    else:
        raise ValueError(f"unknown tokenizer fixture {kind!r}")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    if kind == "bpe":  # already in the vocabulary, so they keep ids 0-2
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _BPE_SPECIALS])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind == "bpe")
    tok.decoder = decoders.ByteLevel()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def _as_byte_chars(text: str, byte_char: Mapping[int, str]) -> str:
    return "".join(byte_char[b] for b in text.encode("utf-8"))
