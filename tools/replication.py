"""Miniature, data-free-transfer replication: does a transferred LoRA help its new base model?

Everything is trained here from scratch, on text that ships with every CPython (the running
interpreter's standard library, found through `sysconfig`), with one shared byte-level vocabulary
(256 tokens, token id = byte):

- general text ("docs"): the Python reference manual topics in `pydoc_data/topics.py`;
- shifted text ("docstrings"): the docstrings of the stdlib's top-level modules (via `ast`);
- the LoRA's domain ("code"): Python source of the stdlib's top-level modules; every 8th file
  (sorted by name) is held out for evaluation, the rest trains the LoRAs.

Per seed: a llama-style source S pretrained on docs; three targets — `upgrade` (S trained further
on docs + docstrings, same shapes), `resized` (llama-style, other width/depth/heads, trained
independently on docs) and `gemma2` (gemma2-style, trained independently on docs); a LoRA trained
on S for code, and the same LoRA recipe trained directly on each target (the upper bound). Then
every target × method is transferred with `crosslora_jax.transfer` (the real pipeline, files in
and out) and scored by held-out code loss (nats/byte, and next-byte accuracy) through
`crosslora_jax.eval`. Recovered fraction = (L_base − L_transfer) / (L_base − L_trained).

One more target is opt-in (`--targets=...,bpe`): `bpe`, the `resized` shapes over another
vocabulary — the same text through a byte-level BPE tokenizer (`synthetic.write_tokenizer(...,
"bpe")`: specials, the 256 bytes, 31 merges), trained and scored on its own token ids — to measure
distillation across vocabularies (`--kd=sequence`, `shared`, `bytes`); its losses are nats/token.

    python tools/replication.py            # the full table (docs/replication.md)
    python tools/replication.py --smoke    # harness check, tiny sizes, one seed, < 60 s
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __name__ == "__main__" and "--smoke" in sys.argv[1:]:
    # The smoke run is dominated by XLA compiles of ~10 tiny programs: compile them cheaply.
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import crosslora_jax
from crosslora_jax import synthetic
from crosslora_jax.arch import ARCHITECTURES, ROLES, role_shapes
from crosslora_jax.eval import ModelSpec, load_model, logits, model_spec, to_hf, token_logprobs
from crosslora_jax.io.hf_config import read_model_config
from crosslora_jax.io.peft_adapter import write_adapter
from crosslora_jax.io.stacks import LoraStack
from crosslora_jax.io.tokenizer import read_tokenizer

VOCAB = 256  # the byte models' vocabulary; the bpe target's is synthetic.tokenizer_vocab_size("bpe")
TARGETS = ("upgrade", "resized", "gemma2", "bpe")  # what --targets may name


# --------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass(frozen=True)
class ModelSize:
    model_type: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    head_dim: int = 16


@dataclasses.dataclass(frozen=True)
class Settings:
    source: ModelSize
    resized: ModelSize
    gemma2: ModelSize
    seq_len: int  # T, predicted bytes per training window
    batch: int
    pretrain_steps: int
    upgrade_steps: int
    lora_steps: int
    lora_rank: int
    lora_alpha: float
    svd_ranks: tuple[int, ...]  # r of the truncated SVDs; the gates use the first
    gates: tuple[float, ...]  # min_similarity thresholds, applied with cross_lora
    eval_windows: int
    seeds: int
    corpus_bytes: int  # cap on each training corpus
    distill_prompts: int = 4000  # teacher sequences of seq_len sampled bytes
    distill_steps: int = 600
    distill_lr: float = 5e-3
    # "kd", "kd:w" (KL to the target base on its own samples, weight w) or "kd:w:c" (DistillOptions'
    # sequence_weight c), for kd in full/delta/product/sequence/shared/bytes; the bpe target runs only
    # sequence/shared/bytes, the byte targets all but shared/bytes (one vocabulary: the library refuses them)
    distill_variants: tuple[str, ...] = ("full", "delta")
    distill_init: str = "cross_lora"
    distill_learn: str = "lora"  # or "transform": r_t×r_s maps between the subspaces
    distill_tag: str = ""  # added to the row labels when the command line overrides the above
    # DistillOptions fields the `default` variant sets (--distill_set): a lever measured against the defaults
    distill_set: dict = dataclasses.field(default_factory=dict)
    # scored; every byte base is trained anyway, bpe (the resized shapes, another vocabulary) only when named
    targets: tuple[str, ...] = ("upgrade", "resized", "gemma2")


FULL = Settings(
    source=ModelSize("llama", 64, 128, 4, 2, 3),
    resized=ModelSize("llama", 48, 128, 3, 1, 4),
    gemma2=ModelSize("gemma2", 64, 128, 4, 1, 3),
    seq_len=64,
    batch=16,
    pretrain_steps=300,
    upgrade_steps=150,
    lora_steps=150,
    lora_rank=8,
    lora_alpha=16.0,
    svd_ranks=(16, 64),
    gates=(0.3, 0.5, 0.7),
    eval_windows=256,
    seeds=3,
    corpus_bytes=2_000_000,
)
SMOKE = Settings(
    source=ModelSize("llama", 32, 64, 2, 1, 2),
    resized=ModelSize("llama", 48, 96, 3, 1, 3),
    gemma2=ModelSize("gemma2", 32, 64, 2, 1, 2),
    seq_len=32,
    batch=8,
    pretrain_steps=8,
    upgrade_steps=4,
    lora_steps=6,
    lora_rank=4,
    lora_alpha=8.0,
    svd_ranks=(8,),
    gates=(0.5,),
    eval_windows=16,
    seeds=1,
    corpus_bytes=200_000,
    distill_prompts=32,
    distill_steps=4,
    distill_variants=("full", "delta", "full:0.5"),
)


def methods(settings: Settings) -> list[tuple[str, int, float]]:
    """(method, svd rank, min_similarity) rows of the table; truncate uses no SVD."""
    r0 = settings.svd_ranks[0]
    rows = [("truncate", r0, 0.0)]
    for r in settings.svd_ranks:
        rows += [("cross_lora", r, 0.0), ("lora_x", r, 0.0)]
    return rows + [("cross_lora", r0, g) for g in settings.gates]


def method_label(method: str, rank: int, gate: float) -> str:
    if method == "truncate":
        return method
    return f"{method} r={rank}" + (f", gate {gate}" if gate else "")


# --------------------------------------------------------------------------------------------
# Text


def corpora(cap: int) -> dict[str, np.ndarray]:
    """Byte arrays: docs, docstrings (shifted text), code_train, code_eval, and general_eval (the
    docstrings of the held-out files: natural-language text no model trains on)."""
    from pydoc_data.topics import topics  # ships with CPython

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith("_"))
    docstrings, docstrings_eval, code_train, code_eval = [], [], [], []
    for n, path in enumerate(files):
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        (code_eval if n % 8 == 0 else code_train).append(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    (docstrings if n % 8 else docstrings_eval).append(doc)
    docs = "\n\n".join(topics[k] for k in sorted(topics))

    def as_bytes(text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8)[:cap].copy()

    return {
        "docs": as_bytes(docs),
        "docstrings": as_bytes("\n\n".join(docstrings)),
        "code_train": as_bytes("\n\n".join(code_train)),
        "code_eval": as_bytes("\n\n".join(code_eval)),
        "general_eval": as_bytes("\n\n".join(docstrings_eval)),
    }


@functools.cache
def _bpe_tokenizer():
    with tempfile.TemporaryDirectory(prefix="crosslora_bpe_") as folder:
        return read_tokenizer(synthetic.write_tokenizer(Path(folder), "bpe"))


def bpe_corpora(text: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same corpora as the bpe fixture's token ids (int32), under "<name>.bpe". Each corpus is
    UTF-8 cut at a byte cap, so a character split at the end is dropped; <s> is not in the streams
    (windows start with it: `bos_of`)."""
    names = list(text)
    encoded = _bpe_tokenizer().encode_batch([text[k].tobytes().decode("utf-8", errors="ignore") for k in names])
    return {f"{k}.bpe": np.asarray(ids, np.int32) for k, ids in zip(names, encoded, strict=True)}


def bos_of(target: str) -> int | None:
    """The bpe target's windows start with its <s>, as a model with a BOS token is trained and as
    `distill` feeds it (BOS, then the teacher's text); the byte models have none."""
    return _bpe_tokenizer().bos_id if target == "bpe" else None


def tokens_of(text: dict[str, np.ndarray], target: str, name: str) -> np.ndarray:
    """Corpus `name` as `target`'s token ids: bytes, or the bpe ids for the bpe target."""
    return text[f"{name}.bpe"] if target == "bpe" else text[name]


def tokenizer_of(target: str) -> str:
    return "bpe" if target == "bpe" else "bytes"


def _windows(data: np.ndarray, starts: np.ndarray, seq_len: int, bos: int | None) -> np.ndarray:
    if bos is None:
        return np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int32)
    return np.stack([np.concatenate([[bos], data[s : s + seq_len]]) for s in starts]).astype(np.int32)


def sample(rng: np.random.Generator, data: np.ndarray, batch: int, seq_len: int, bos: int | None = None) -> np.ndarray:
    """Random windows [batch, seq_len + 1] of token ids (bytes, or bpe ids for the bpe target), the
    first one `bos` when given."""
    starts = rng.integers(0, len(data) - seq_len - 1, batch)
    return _windows(data, starts, seq_len, bos)


def eval_windows(data: np.ndarray, seq_len: int, count: int, bos: int | None = None) -> np.ndarray:
    """Evenly spaced windows [count, seq_len + 1] over the held-out text (the same for every model
    of one vocabulary), the first token `bos` when given."""
    starts = np.linspace(0, len(data) - seq_len - 1, count).astype(int)
    return _windows(data, starts, seq_len, bos)


# --------------------------------------------------------------------------------------------
# Models


def config_for(size: ModelSize, vocab: int = VOCAB) -> dict:
    config = synthetic.model_config(
        size.model_type,
        hidden=size.hidden,
        intermediate=size.intermediate,
        heads=size.heads,
        kv_heads=size.kv_heads,
        layers=size.layers,
        head_dim=size.head_dim,
        vocab=vocab,
    )
    if size.model_type == "gemma2":
        config["sliding_window"] = 32  # active on the alternating sliding layers at our lengths
    return config


def spec_for(folder: Path, config: dict) -> ModelSpec:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return model_spec(read_model_config(folder))


def init_params(spec: ModelSpec, config: dict, seed: int) -> dict:
    """Random init in the evaluator's canonical layout (see crosslora_jax.eval._params)."""
    rng = np.random.default_rng(seed)
    shapes = role_shapes(config)
    vocab = config["vocab_size"]
    layers: dict[str, np.ndarray] = {}
    for role in ROLES:
        m, n = shapes[role]
        std = 1 / math.sqrt(n) * (1 / math.sqrt(2 * spec.num_layers) if role in ("o", "down") else 1)
        layers[role] = rng.standard_normal((spec.num_layers, m, n)) * std
    norm_init = 1.0 - spec.norm_offset  # gemma stores w - 1
    for name in spec.norm_names:
        layers[name] = np.full((spec.num_layers, spec.hidden), norm_init)
    params = {
        "embed": rng.standard_normal((vocab, spec.hidden)) * (1 / math.sqrt(spec.hidden) if spec.embed_scale else 1),
        "norm": np.full(spec.hidden, norm_init),
        "layers": layers,
    }
    if not spec.tied:
        params["lm_head"] = rng.standard_normal((vocab, spec.hidden)) / math.sqrt(spec.hidden)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


_ADAM = optax.adam(1.0)  # unit step: the schedule and each group's lr scale its direction in _step


def _loss(spec, params, lora, tokens):
    return -jnp.mean(token_logprobs(spec, params, tokens, lora))


@functools.partial(jax.jit, static_argnums=0)
def _step(spec, params, lora, state, lr_base, lr_lora, tokens):
    """One Adam step on base params and LoRA factors at once (lr 0 freezes a group).

    Base pretraining and LoRA training share this one function so that each architecture
    compiles a single training step (compiles dominate the smoke run on 2 CPU cores).
    """
    trainable = (params, {r: {"a": x.a, "b": x.b} for r, x in lora.items()})

    def loss_fn(t):
        p, factors = t
        return _loss(spec, p, {r: lora[r]._replace(**factors[r]) for r in factors}, tokens)

    loss, grads = jax.value_and_grad(loss_fn)(trainable)
    updates, state = _ADAM.update(grads, state)
    params = jax.tree.map(lambda p, u: p + lr_base * u, params, updates[0])
    factors = jax.tree.map(lambda p, u: p + lr_lora * u, trainable[1], updates[1])
    return params, {r: lora[r]._replace(**factors[r]) for r in lora}, state, loss


def _schedule(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 20)
    if step <= warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def new_lora(spec, config, settings, seed, scale=None):
    """Rank-k factors on every projection of every layer, B = 0 (PEFT's init)."""
    rng = np.random.default_rng(seed)
    shapes = role_shapes(config)
    k = settings.lora_rank
    scale = settings.lora_alpha / k if scale is None else scale
    lora = {}
    for role in ROLES:
        m, n = shapes[role]
        lora[role] = LoraStack(
            jnp.asarray(rng.uniform(-1, 1, (spec.num_layers, k, n)) / math.sqrt(n), jnp.float32),
            jnp.zeros((spec.num_layers, m, k), jnp.float32),
            jnp.full((spec.num_layers,), scale, jnp.float32),
            tuple(range(spec.num_layers)),
        )
    return lora


def _train(spec, params, lora, data_mix, steps, settings, seed, lr_base, lr_lora, bos=None):
    rng = np.random.default_rng(seed)
    trainable = (params, {r: {"a": x.a, "b": x.b} for r, x in lora.items()})
    state, loss = _ADAM.init(trainable), float("nan")
    for step in range(1, steps + 1):
        tokens = sample(rng, data_mix[step % len(data_mix)], settings.batch, settings.seq_len, bos)
        factor = _schedule(step, steps, 1.0)
        params, lora, state, loss = _step(spec, params, lora, state, lr_base * factor, lr_lora * factor, tokens)
    return params, lora, float(loss)


def train_base(spec, config, params, data_mix, steps, settings, seed, lr=3e-3, bos=None):
    """Adam on next-token loss; `data_mix` is a list of corpora sampled alternately."""
    idle = new_lora(spec, config, settings, seed, scale=0.0)  # zero scale: no effect, never updated
    params, _, loss = _train(spec, params, idle, data_mix, steps, settings, seed, lr, 0.0, bos)
    return params, loss


def train_lora(spec, params, config, data, settings, seed, lr=5e-3, steps=None, bos=None):
    """The code LoRA with the base frozen (`steps` defaults to the recipe's lora_steps)."""
    lora = new_lora(spec, config, settings, seed)
    return _train(spec, params, lora, [data], steps or settings.lora_steps, settings, seed, 0.0, lr, bos)[1]


def save_model(folder: Path, config: dict, spec: ModelSpec, params: dict, tokenizer: str = "bytes") -> Path:
    tensors = to_hf(spec, jax.tree.map(np.asarray, params))
    folder = synthetic.write_model(folder, config, tensors)
    synthetic.write_tokenizer(folder, tokenizer)  # bytes: token id = byte (all but the bpe target); distill reads it
    return folder


def save_lora(folder: Path, config: dict, lora: dict, settings: Settings) -> Path:
    arch = ARCHITECTURES[config["model_type"]]
    factors = {
        arch.module_path(role, layer): (np.asarray(x.a[layer]), np.asarray(x.b[layer]))
        for role, x in lora.items()
        for layer in range(config["num_hidden_layers"])
    }
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": settings.lora_rank,
        "lora_alpha": settings.lora_alpha,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in arch.role_modules.values()}),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "base_model_name_or_path": str(folder),
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_adapter(folder, factors, adapter_config, "float32")
    return folder


@functools.partial(jax.jit, static_argnums=0)
def _heldout_metrics(spec, params, tokens):
    """Mean next-token loss (nats) and top-1 accuracy over windows [N, T+1]: per byte on the byte
    models, per bpe token on the bpe target (its recovered fractions are ratios of its own losses on
    its own windows, so the unit cancels)."""
    out = logits(spec, params, tokens[:, :-1])
    logp = jax.nn.log_softmax(out, axis=-1)
    target = tokens[:, 1:]
    loss = -jnp.take_along_axis(logp, target[..., None], axis=-1).mean()
    acc = (jnp.argmax(out, axis=-1) == target).mean()
    return loss, acc


@functools.partial(jax.jit, static_argnums=0)
def _window_logits(spec, params, tokens):
    return logits(spec, params, tokens[:, :-1])


def _teacher_logits(source: Path, source_lora: Path, target: Path, windows: np.ndarray) -> dict[str, np.ndarray]:
    """float64 logits on the windows of S + LoRA ("sl"), S ("s") and the target ("t")."""
    tokens = jnp.asarray(windows)
    z = {}
    for name, (folder, adapter) in {"sl": (source, source_lora), "s": (source, None), "t": (target, None)}.items():
        spec, params = load_model(folder, adapter)
        z[name] = np.asarray(_window_logits(spec, jax.tree.map(jnp.asarray, params), tokens), np.float64)
    return z


def _cross_entropy(z_teacher: np.ndarray, windows: np.ndarray) -> float:
    z_teacher = z_teacher - z_teacher.max(-1, keepdims=True)
    logp = z_teacher - np.log(np.exp(z_teacher).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, windows[:, 1:, None], axis=-1).mean())


def teacher_losses(source: Path, source_lora: Path, target: Path, windows: np.ndarray) -> dict[str, float]:
    """Held-out next-byte loss of each objective's teacher distribution on the windows: what a
    student that imitated its teacher perfectly would score (the cap of pure imitation).
    full/sequence: S + its LoRA; delta: softmax(z_target + z_{S+LoRA} − z_S); product (at the
    default weight b): softmax((1 − b)·z_target + b·z_{S+LoRA})."""
    z = _teacher_logits(source, source_lora, target, windows)
    full = _cross_entropy(z["sl"], windows)
    b = crosslora_jax.DistillOptions().product_weight
    return {"full": full, "sequence": full, "delta": _cross_entropy(z["t"] + z["sl"] - z["s"], windows),
            "product": _cross_entropy(_teacher_variant("product", b, z), windows)}  # fmt: skip


# Teacher distributions beyond the two objectives: is there one a student could imitate past 80 %?
# delta ×a: softmax(z_T + a·(z_{S+L} − z_S)); product b: softmax((1 − b)·z_T + b·z_{S+L}).
TEACHER_VARIANTS = {
    **{f"delta ×{a:g}": ("delta", a) for a in (0.5, 1.0, 1.5)},
    **{f"product b={b:g}": ("product", b) for b in (0.25, 0.5, 0.75)},
    "full (S + LoRA)": ("product", 1.0),
}


def _teacher_variant(kind: str, weight: float, z: dict[str, np.ndarray]) -> np.ndarray:
    if kind == "delta":
        return z["t"] + weight * (z["sl"] - z["s"])
    return (1.0 - weight) * z["t"] + weight * z["sl"]


def teacher_rows(seed: int, settings: Settings, text: dict[str, np.ndarray], seed_dir: Path, loras: dict,
                 log) -> list[dict]:  # fmt: skip
    """Per target × teacher variant: held-out code and general-text loss of the teacher itself
    (byte targets only: mixing logits needs one vocabulary)."""
    windows = {name: eval_windows(text[f"{name}_eval"], settings.seq_len, settings.eval_windows)
               for name in ("code", "general")}  # fmt: skip
    rows = []
    for target in settings.targets:
        if tokenizer_of(target) != "bytes":
            log(f"seed {seed}: {target:8s} no teacher rows (logit-level teachers need the source's vocabulary)")
            continue
        folder = seed_dir / target
        base = {k: score(folder, None, w)[0] for k, w in windows.items()}
        trained = {k: score(folder, loras[target], w)[0] for k, w in windows.items()}
        z = {k: _teacher_logits(seed_dir / "S", loras["S"], folder, w) for k, w in windows.items()}
        for label, (kind, weight) in TEACHER_VARIANTS.items():
            loss = {k: _cross_entropy(_teacher_variant(kind, weight, z[k]), windows[k]) for k in windows}
            gain = base["code"] - trained["code"]
            rows.append({
                "kind": "teacher", "seed": seed, "target": target, "method": label,
                "L_base": base["code"], "L_teacher": loss["code"], "L_trained": trained["code"],
                "recovered": (base["code"] - loss["code"]) / gain if gain > 0 else float("nan"),
                "G_base": base["general"], "G_teacher": loss["general"], "G_trained": trained["general"],
            })  # fmt: skip
            log(f"seed {seed}: {target:8s} teacher {label:16s} code {loss['code']:.4f} recovered "
                f"{rows[-1]['recovered']:+.3f}; general {base['general']:.4f} -> {loss['general']:.4f}")  # fmt: skip
    return rows


def teacher_table(rows: list[dict]) -> str:
    """Markdown for the teacher rows, mean ± sd over seeds."""
    lines = [
        "| target | teacher | L_base | L_teacher | L_trained | teacher recovers | min…max | "
        "general: base → teacher (Δ) | general Δ of the trained LoRA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target, method, g in _groups(rows):
        rec = [r["recovered"] for r in g]
        lines.append(
            f"| {target} | {method} | {_mean_spread([r['L_base'] for r in g])} | "
            f"{_mean_spread([r['L_teacher'] for r in g])} | {_mean_spread([r['L_trained'] for r in g])} | "
            f"{_mean_spread(rec)} | {_span(rec)} | "
            f"{np.mean([r['G_base'] for r in g]):.3f} → {np.mean([r['G_teacher'] for r in g]):.3f} "
            f"({_mean_spread([r['G_teacher'] - r['G_base'] for r in g])}) | "
            f"{_mean_spread([r['G_trained'] - r['G_base'] for r in g])} |"
        )
    return "\n".join(lines)


def score(model_dir: Path, adapter_dir: Path | None, windows: np.ndarray) -> tuple[float, float]:
    """Held-out (loss, accuracy) of the model files, with the adapter files merged in."""
    spec, params = load_model(model_dir, adapter_dir)
    loss, acc = _heldout_metrics(spec, jax.tree.map(jnp.asarray, params), jnp.asarray(windows))
    return float(loss), float(acc)


# --------------------------------------------------------------------------------------------
# The experiment


def run_seed(
    seed: int, settings: Settings, text: dict[str, np.ndarray], work: Path, log, groups: tuple[str, ...]
) -> list[dict]:
    """Train everything for one seed, transfer and/or distil, score; one row per target × method."""
    windows = eval_windows(text["code_eval"], settings.seq_len, settings.eval_windows)
    seed_dir = work / f"seed{seed}"
    models: dict[str, tuple[dict, ModelSpec, dict]] = {}

    def base(name, size, init_seed, data_mix, steps, start=None):
        tokenizer = tokenizer_of(name)
        config = config_for(size, synthetic.tokenizer_vocab_size(tokenizer))
        spec = spec_for(seed_dir / name, config)
        params = init_params(spec, config, init_seed) if start is None else start
        t0 = time.perf_counter()
        params, loss = train_base(spec, config, params, data_mix, steps, settings, seed=init_seed + 7, bos=bos_of(name))
        log(
            f"seed {seed}: trained {name} ({steps} steps, final train loss {loss:.3f}) in {time.perf_counter() - t0:.1f}s"
        )
        save_model(seed_dir / name, config, spec, params, tokenizer)
        models[name] = (config, spec, params)

    base("S", settings.source, 1000 * seed + 1, [text["docs"]], settings.pretrain_steps)
    base(
        "upgrade",
        settings.source,
        1000 * seed + 2,
        [text["docs"], text["docstrings"]],
        settings.upgrade_steps,
        start=models["S"][2],
    )
    base("resized", settings.resized, 1000 * seed + 3, [text["docs"]], settings.pretrain_steps)
    base("gemma2", settings.gemma2, 1000 * seed + 4, [text["docs"]], settings.pretrain_steps)
    if "bpe" in settings.targets:  # the resized recipe over the bpe ids of the same text
        base("bpe", settings.resized, 1000 * seed + 5, [text["docs.bpe"]], settings.pretrain_steps)

    loras = {}
    for name, (config, spec, params) in models.items():
        t0 = time.perf_counter()
        lora = train_lora(spec, params, config, tokens_of(text, name, "code_train"), settings, seed=1000 * seed + 50,
                          bos=bos_of(name))  # fmt: skip
        loras[name] = save_lora(seed_dir / f"lora_{name}", config, lora, settings)
        log(f"seed {seed}: trained the code LoRA on {name} in {time.perf_counter() - t0:.1f}s")

    source_loss = score(seed_dir / "S", None, windows)[0]
    source_lora = score(seed_dir / "S", loras["S"], windows)[0]
    log(f"seed {seed}: S held-out code loss {source_loss:.4f} -> {source_lora:.4f} with its LoRA")
    rows = []
    if "distill" in groups:
        rows += distill_rows(seed, settings, text, seed_dir, models, loras, log)
    if "teachers" in groups:
        rows += teacher_rows(seed, settings, text, seed_dir, loras, log)
    for target in settings.targets if "data_free" in groups else ():
        # transfer moves weights only (no tokenizer involved); each target is scored on its own windows
        # (L_source / L_source_lora stay S's, on the byte windows)
        held_out = eval_windows(tokens_of(text, target, "code_eval"), settings.seq_len, settings.eval_windows,
                                bos_of(target))  # fmt: skip
        l_base, a_base = score(seed_dir / target, None, held_out)
        l_trained, a_trained = score(seed_dir / target, loras[target], held_out)
        totals: dict[int, int] = {}
        for method, rank, gate in methods(settings):
            out = seed_dir / f"out_{target}_{method}_{rank}_{gate}"
            options = crosslora_jax.TransferOptions(
                method=method, svd=crosslora_jax.SvdSettings(rank=rank), min_similarity=gate
            )
            t0 = time.perf_counter()
            try:
                (report,) = crosslora_jax.transfer(seed_dir / "S", seed_dir / target, [loras["S"]], out, options)
            except crosslora_jax.TransferError:  # every module gated out: the target keeps its base weights
                report, (l_tr, a_tr) = None, (l_base, a_base)
            else:
                l_tr, a_tr = score(seed_dir / target, out, held_out)
            seconds = time.perf_counter() - t0
            modules = report.modules if report is not None else ()
            transferred = [m for m in modules if m.status == "transferred"]
            computed = [m.figures for m in modules if m.figures is not None]
            scored = [f for f in computed if f.phi_u is not None and f.phi_v is not None]  # truncate computes no φ
            totals.setdefault(rank, len(computed))
            denominator = l_base - l_trained
            rows.append(
                {
                    "seed": seed,
                    "target": target,
                    "method": method_label(method, rank, gate),
                    "L_source": source_loss,
                    "L_source_lora": source_lora,
                    "L_base": l_base,
                    "L_transfer": l_tr,
                    "L_trained": l_trained,
                    "acc_base": a_base,
                    "acc_transfer": a_tr,
                    "acc_trained": a_trained,
                    "recovered": (l_base - l_tr) / denominator if denominator > 0 else float("nan"),
                    "modules_transferred": len(transferred),
                    "modules_total": totals[rank],
                    "phi_min_mean": float(np.mean([min(f.phi_u, f.phi_v) for f in scored])) if scored else None,
                    "chance_mean": float(np.mean([max(f.chance_u, f.chance_v) for f in scored])) if scored else None,
                    # the summary's verdict line (docs/method.md "The verdict"): its outcome and mean lift
                    "verdict": None if report is None else report.verdict.outcome,
                    "verdict_lift": None if report is None else report.verdict.lift,
                    "seconds": seconds,
                }
            )
            lift = rows[-1]["verdict_lift"]
            log(
                f"seed {seed}: {target:8s} {rows[-1]['method']:26s} L_base {l_base:.4f} L_transfer {l_tr:.4f} "
                f"L_trained {l_trained:.4f} recovered {rows[-1]['recovered']:+.3f} "
                f"({len(transferred)}/{totals[rank]} modules, {seconds:.1f}s; verdict {rows[-1]['verdict']}"
                + ("" if lift is None else f", lift {lift:+.3f}")
                + ")"
            )
        # φ is a property of the pair at rank r, not of the method: truncate's row shows the
        # value cross_lora measured at the same rank (truncate itself needs no SVD).
        by_label = {r["method"]: r for r in rows if r["seed"] == seed and r["target"] == target}
        same_rank = by_label.get(method_label("cross_lora", settings.svd_ranks[0], 0.0))
        if same_rank is not None:
            by_label["truncate"].update({k: same_rank[k] for k in ("phi_min_mean", "chance_mean", "verdict",
                                                                     "verdict_lift")})  # fmt: skip
    return rows


# the objectives that work when the tokenizers differ, and those the library refuses on one vocabulary
CROSS_VOCAB_KD = tuple(name for name, o in crosslora_jax.distillation.OBJECTIVES.items() if o.vocabularies != "one")
DIFFERENT_VOCAB_ONLY = tuple(
    name for name, o in crosslora_jax.distillation.OBJECTIVES.items() if o.vocabularies == "different"
)


DEFAULTS = "default"  # the variant that runs `DistillOptions()` as a user without flags gets it


def parse_variant(variant: str) -> tuple[str, float, float | None]:
    """ "kd[:anchor_weight[:sequence_weight]]" → (kd, anchor weight (0 if not given), sequence
    weight (None if not given: DistillOptions' default)); "default" → ("default", NaN, None): the
    library's defaults, every field (the recipe's schedule flags, anchor and kd=auto included)."""
    if variant == DEFAULTS:
        return DEFAULTS, float("nan"), None
    kd, *weights = variant.split(":")
    if len(weights) > 2:
        raise ValueError(f"distill variant {variant!r}: expected kd[:anchor_weight[:sequence_weight]]")
    anchor = float(weights[0]) if weights else 0.0
    return kd, anchor, float(weights[1]) if len(weights) == 2 else None


def variant_label(kd: str, anchor: float, ce_weight: float | None) -> str:
    """e.g. "distill full", "distill full + anchor 0.5", "distill shared + anchor 0.5, CE ×1"."""
    if kd == DEFAULTS:
        return "distill, defaults"
    label = f"distill {kd}" + (f" + anchor {anchor}" if anchor else "")
    return label + ("" if ce_weight is None else f", CE ×{ce_weight:g}")


def distill_rows(seed, settings, text, seed_dir, models, loras, log) -> list[dict]:
    """Per target: the compute-matched LoRA (the distillation's step budget on real code), then
    `crosslora_jax.distill` per objective (files in and out), scored on held-out code and on
    general text. Across vocabularies (the bpe target) only sequence/shared/bytes apply, and there is
    no logit-level teacher to score (L_teacher NaN); the byte targets run every variant but shared/bytes."""
    variants = [parse_variant(v) for v in settings.distill_variants]
    rows = []
    for target in settings.targets:
        bytes_target = tokenizer_of(target) == "bytes"
        applicable = [
            v
            for v in variants
            if v[0] == DEFAULTS or (v[0] not in DIFFERENT_VOCAB_ONLY if bytes_target else v[0] in CROSS_VOCAB_KD)
        ]
        if not applicable:
            log(
                f"seed {seed}: {target:8s} no distill variant applies (across vocabularies: kd sequence, shared or bytes)"
            )
            continue
        windows, general = (eval_windows(tokens_of(text, target, name), settings.seq_len, settings.eval_windows,
                                         bos_of(target)) for name in ("code_eval", "general_eval"))  # fmt: skip
        config, spec, params = models[target]
        folder = seed_dir / target
        (l_base, _), (l_trained, _) = (score(folder, a, windows) for a in (None, loras[target]))
        g_base, g_trained = (score(folder, a, general)[0] for a in (None, loras[target]))
        teachers = teacher_losses(seed_dir / "S", loras["S"], folder, windows) if bytes_target else {}
        runs = []
        for kd, anchor, ce_weight in applicable:
            label = variant_label(kd, anchor, ce_weight) + settings.distill_tag
            options = distill_options(settings, seed, kd, anchor, ce_weight)
            out = seed_dir / (f"distill_{target}_{kd}_{anchor}" + ("" if ce_weight is None else f"_{ce_weight}"))
            t0 = time.perf_counter()
            report = crosslora_jax.distill(seed_dir / "S", folder, loras["S"], out, options)
            runs.append((label, report, out, time.perf_counter() - t0))
        # the compute-matched LoRA: the distillation's step budget on real code (the steps the first
        # variant ran when it stopped on its own)
        matched_steps = runs[0][1].distill.stopping.steps_run
        t0 = time.perf_counter()
        matched = train_lora(spec, params, config, tokens_of(text, target, "code_train"), settings,
                             seed=1000 * seed + 50, steps=matched_steps, bos=bos_of(target))  # fmt: skip
        matched_dir = save_lora(seed_dir / f"lora_{target}_matched", config, matched, settings)
        matched_seconds = time.perf_counter() - t0
        l_matched = score(folder, matched_dir, windows)[0]
        for label, report, out, seconds in runs:
            kd = report.distill.settings.kd  # `auto` resolved
            held = report.distill.heldout.objective
            l_d = score(folder, out, windows)[0]
            g_d = score(folder, out, general)[0]
            gain, matched_gain = l_base - l_trained, l_base - l_matched
            stopping = report.distill.stopping
            rows.append({
                "kind": "distill", "seed": seed, "target": target, "method": label,
                "L_base": l_base, "L_transfer": l_d, "L_trained": l_trained, "L_matched": l_matched,
                "recovered": (l_base - l_d) / gain if gain > 0 else float("nan"),
                "recovered_matched": (l_base - l_d) / matched_gain if matched_gain > 0 else float("nan"),
                "L_teacher": teachers.get(kd, float("nan")),  # NaN: no logit-level teacher across vocabularies
                "recovered_teacher": (l_base - teachers.get(kd, float("nan"))) / gain if gain > 0 else float("nan"),
                "G_base": g_base, "G_distill": g_d, "G_trained": g_trained,
                "heldout_before": held.before, "heldout_after": held.after,
                # shared/bytes: the positions that meet (and shared tokens)
                "alignment": None if report.distill.alignment is None else report.distill.alignment.to_json(),
                "seconds": seconds, "matched_seconds": matched_seconds, "matched_steps": matched_steps,
                "steps_run": stopping.steps_run, "stop": stopping.reason, "best_step": stopping.best_step,
                "heldout_curve": [[p.step, p.loss] for p in stopping.curve],
                "eval_jitter": eval_jitter(stopping.curve),
            })  # fmt: skip
            r = rows[-1]
            log(
                f"seed {seed}: {target:8s} {label:22s} L_base {l_base:.4f} L_distill {l_d:.4f} L_trained "
                f"{l_trained:.4f} (matched {l_matched:.4f}) recovered {r['recovered']:+.3f} "
                f"(its teacher {r['recovered_teacher']:+.3f}) "
                f"(vs matched {r['recovered_matched']:+.3f}); general {g_base:.4f} -> {g_d:.4f} "
                f"(trained LoRA {g_trained:.4f}); {seconds:.0f}s; {stopping.steps_run} steps ({stopping.reason}), "
                f"evaluation jitter {100 * r['eval_jitter']:.2f} %"
            )
    return rows


def eval_jitter(curve: Sequence[tuple[int, float]], from_step: int = 500) -> float:
    """The held-out evaluations' jitter relative to their level: σ of successive differences / √2
    over the evaluations from `from_step` on, divided by their mean (NaN when fewer than 4). Meant
    for runs at one learning rate (`--distill_set=steps=3000,patience=1000`: no cut)."""
    values = np.asarray([v for step, v in curve if step >= from_step])
    if values.size < 4:
        return float("nan")
    return float(np.std(np.diff(values), ddof=1) / np.sqrt(2) / np.mean(values))


def distill_options(
    settings: Settings, seed: int, kd: str, anchor: float, ce_weight: float | None
) -> crosslora_jax.DistillOptions:
    """The `default` variant: `DistillOptions()` but for the seed (and the sampling batch, which
    changes no token: per-row keys). The others: the earlier explicit recipe (SVD rank 16, a fixed
    step count with cosine decay, 64 held-out sequences), so their rows reproduce the earlier tables."""
    if kd == DEFAULTS:
        return crosslora_jax.DistillOptions(seed=seed, gen_batch_size=256, **settings.distill_set)
    steps = settings.distill_steps
    extra = {} if ce_weight is None else {"sequence_weight": ce_weight}
    return crosslora_jax.DistillOptions(
        init=settings.distill_init, learn=settings.distill_learn, kd=kd,
        transfer=crosslora_jax.TransferOptions(svd=crosslora_jax.SvdSettings(rank=settings.svd_ranks[0])),
        prompts=settings.distill_prompts, gen_len=settings.seq_len, gen_batch_size=256, steps=steps,
        batch_size=settings.batch, learning_rate=settings.distill_lr, warmup_steps=steps // 20,
        anchor_weight=anchor, heldout=64, seed=seed, log_every=max(steps // 10, 1), early_stopping=False, **extra,
    )  # fmt: skip


def distill_table(rows: list[dict]) -> str:
    """Markdown for the distillation rows, mean ± sd over seeds."""
    lines = [
        "| target | method | L_base | L_distill | L_trained (150 steps) | L_trained (matched) | recovered | "
        "recovered min…max | recovered vs matched | teacher recovers | general: base → distill (Δ) | "
        "general Δ of the trained LoRA | seconds | steps run (stop) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, method, g in _groups(rows):
        stops = ", ".join(sorted({r.get("stop", "steps") for r in g}))
        rec = [r["recovered"] for r in g]
        d_dist = [r["G_distill"] - r["G_base"] for r in g]
        d_trained = [r["G_trained"] - r["G_base"] for r in g]
        lines.append(
            f"| {target} | {method} | {_mean_spread([r['L_base'] for r in g])} | "
            f"{_mean_spread([r['L_transfer'] for r in g])} | {_mean_spread([r['L_trained'] for r in g])} | "
            f"{_mean_spread([r['L_matched'] for r in g])} | {_mean_spread(rec)} | {_span(rec)} | "
            f"{_mean_spread([r['recovered_matched'] for r in g])} | "
            f"{_mean_spread([r.get('recovered_teacher', float('nan')) for r in g])} | "
            f"{np.mean([r['G_base'] for r in g]):.3f} → {np.mean([r['G_distill'] for r in g]):.3f} "
            f"({_mean_spread(d_dist)}) | {_mean_spread(d_trained)} | {np.mean([r['seconds'] for r in g]):.0f} | "
            f"{np.mean([r.get('steps_run', r.get('matched_steps', 0)) for r in g]):.0f} ({stops}) |"
        )
    return "\n".join(lines)


def _groups(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(target, method, its rows over seeds), in first-seen order: one table line each."""
    keys = dict.fromkeys((r["target"], r["method"]) for r in rows)
    return [(t, m, [r for r in rows if r["target"] == t and r["method"] == m]) for t, m in keys]


def _mean_spread(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _span(values: list[float]) -> str:
    """min…max of the values that are not NaN (n/a without any)."""
    finite = [v for v in values if not math.isnan(v)]
    return f"{min(finite):+.3f}…{max(finite):+.3f}" if finite else "n/a"


def table(rows: list[dict]) -> str:
    """Markdown: one line per target × method, mean ± sample std over seeds (and the min–max of the recovery)."""
    lines = [
        "| target | method | L_base | L_transfer | L_trained | recovered (mean ± sd) | recovered min…max | "
        "acc base / transfer / trained | modules | mean min(φ_U,φ_V) (chance) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, method, group in _groups(rows):
        rec = [r["recovered"] for r in group]
        acc = " / ".join(
            _mean_spread([r[k] for r in group], 3).split(" ±")[0] for k in ("acc_base", "acc_transfer", "acc_trained")
        )
        modules = f"{np.mean([r['modules_transferred'] for r in group]):.1f}/{group[0]['modules_total']}"
        phis = [r["phi_min_mean"] for r in group if r["phi_min_mean"] is not None]
        chances = [r["chance_mean"] for r in group if r["chance_mean"] is not None]
        phi = f"{np.mean(phis):.3f} ({np.mean(chances):.3f})" if phis else "n/a"
        lines.append(
            f"| {target} | {method} | {_mean_spread([r['L_base'] for r in group])} | "
            f"{_mean_spread([r['L_transfer'] for r in group])} | {_mean_spread([r['L_trained'] for r in group])} | "
            f"{_mean_spread(rec)} | {_span(rec)} | {acc} | {modules} | {phi} |"
        )
    return "\n".join(lines)


def render_tables(rows: list[dict]) -> str:
    """The markdown tables of whichever kinds of rows there are."""
    data_free = [r for r in rows if r.get("kind") not in ("distill", "teacher")]
    distilled = [r for r in rows if r.get("kind") == "distill"]
    teachers = [r for r in rows if r.get("kind") == "teacher"]
    tables = (
        data_free and table(data_free),
        distilled and distill_table(distilled),
        teachers and teacher_table(teachers),
    )
    return "\n\n".join(t for t in tables if t)


def _typed(value: str, like: object) -> object:
    """`value` as the type of the field's default `like`."""
    if isinstance(like, bool):
        return value.lower() in ("1", "true", "yes")
    return type(like)(value) if like is not None else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes and one seed: checks the harness, not the numbers"
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 3, smoke: 1)")
    parser.add_argument(
        "--first_seed", type=int, default=0, help="run seeds first_seed … first_seed + seeds − 1 (several processes)"
    )
    parser.add_argument(
        "--tables_from",
        default=None,
        help="comma-separated JSON files of earlier runs (their rows, e.g. one seed each): print their tables, run nothing",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out", help="results folder")
    parser.add_argument("--keep", action="store_true", help="keep the trained models and adapters under --out/work")
    parser.add_argument("--distill_steps", type=int, default=None, help="override the distillation's step count")
    parser.add_argument(
        "--distill_variants",
        default=None,
        help="e.g. full,delta,full:1.0,shared:0.5:1 (kd[:anchor weight[:sequence weight]]); on the bpe target only "
        "kd sequence/shared/bytes run, on the others all but shared/bytes",
    )
    parser.add_argument(
        "--distill_set",
        default=None,
        help="DistillOptions fields for the `default` variant, e.g. steps=3000,patience=1000 (named in its label)",
    )
    parser.add_argument("--distill_init", default=None, help="data-free init of the distillation (default cross_lora)")
    parser.add_argument(
        "--distill_learn", default=None, help="what the distillation trains: lora (default) or transform"
    )
    parser.add_argument(
        "--targets",
        default=None,
        help="comma-separated subset of upgrade,resized,gemma2,bpe to score (default: upgrade,resized,gemma2); "
        "bpe (the resized shapes over a byte-level BPE vocabulary, same text) is trained only when named",
    )
    parser.add_argument(
        "--groups",
        default="data_free,distill",
        help="row groups to run: data_free (the transfer methods), distill (crosslora_jax.distill per objective), "
        "teachers (the held-out scores of teacher distributions themselves: no training past the LoRAs)",
    )
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    overrides = {
        "distill_steps": args.distill_steps,
        "distill_init": args.distill_init,
        "distill_learn": args.distill_learn,
        "distill_variants": None if args.distill_variants is None else tuple(args.distill_variants.split(",")),
    }
    given = {k: v for k, v in overrides.items() if v is not None and k != "distill_variants"}
    tag = ", ".join(f"{k.removeprefix('distill_')} {v}" for k, v in given.items())
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None},
                                   distill_tag=f" ({tag})" if tag else "")  # fmt: skip
    if args.distill_set:
        fields = {f.name: f.type for f in dataclasses.fields(crosslora_jax.DistillOptions)}
        chosen = {}
        for item in args.distill_set.split(","):
            name, _, value = item.partition("=")
            if name not in fields or name in ("transfer", "seed"):
                parser.error(f"--distill_set: {name!r} is not a DistillOptions field this tool can set")
            chosen[name] = _typed(value, getattr(crosslora_jax.DistillOptions(), name))
        settings = dataclasses.replace(settings, distill_set=chosen,
                                       distill_tag=settings.distill_tag + f" ({args.distill_set})")  # fmt: skip
    groups = tuple(g for g in args.groups.split(",") if g)
    if not groups or set(groups) - {"data_free", "distill", "teachers"}:
        parser.error(f"--groups: choose from data_free, distill, teachers; got {args.groups!r}")
    if args.seeds is not None:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    if args.targets is not None:
        targets = tuple(t for t in args.targets.split(",") if t)
        if not targets or set(targets) - set(TARGETS):
            parser.error(f"--targets: choose from {','.join(TARGETS)}; got {args.targets!r}")
        settings = dataclasses.replace(settings, targets=targets)
    try:
        [parse_variant(v) for v in settings.distill_variants]
    except ValueError as e:
        parser.error(f"--distill_variants: {e}")
    if args.tables_from:
        rows = []
        for name in args.tables_from.split(","):
            loaded = json.loads(Path(name).read_text())
            rows += loaded["rows"] if isinstance(loaded, dict) else loaded
        print(render_tables(rows))
        return 0
    logging.set_verbosity(logging.ERROR)  # the pipeline's per-chunk info and energy warnings
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    text = corpora(settings.corpus_bytes)
    log(
        "corpora (bytes): "
        + ", ".join(f"{k} {len(v)}" for k, v in text.items())
        + f"; stdlib {sysconfig.get_paths()['stdlib']}"
    )
    if "bpe" in settings.targets:
        encoded = bpe_corpora(text)
        log("corpora (bpe tokens): " + ", ".join(f"{k.removesuffix('.bpe')} {len(v)}" for k, v in encoded.items()))
        text |= encoded
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work" if args.keep else Path(tempfile.mkdtemp(prefix="crosslora_replication_"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    rows = []
    try:
        for seed in range(args.first_seed, args.first_seed + settings.seeds):
            rows += run_seed(seed, settings, text, work, log, groups)
            # the rows so far, in case a long run is stopped: the tables come at the end
            (args.out / "rows_so_far.json").write_text(json.dumps(rows, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    md = render_tables(rows)
    name = ("smoke" if args.smoke else "replication") + ("" if len(groups) > 1 else f"_{groups[0]}")
    (args.out / f"{name}.json").write_text(
        json.dumps(
            {"settings": dataclasses.asdict(settings), "seconds": elapsed, "cpus": os.cpu_count(), "rows": rows},
            indent=1,
        )
    )
    (args.out / f"{name}.md").write_text(md + "\n")
    print(md)
    log(f"done: {len(rows)} rows, {settings.seeds} seed(s), {elapsed:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
