"""The training loop on tiny models: only the student's parameters move, the loss falls, the
student starts as the init transfer, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crosslora_jax import Progress, TransferOptions, read_adapter, read_model_config, run_transfer, synthetic
from crosslora_jax.distillation import _checkpoint, _train
from crosslora_jax.distillation._objectives import OBJECTIVES
from crosslora_jax.distillation._run import role_subspaces
from crosslora_jax.distillation._schedule import PlateauRule
from crosslora_jax.distillation._student import Student, build_student, source_lora, student_lora, written_factors
from crosslora_jax.distillation._teacher import as_batch
from crosslora_jax.distillation._train import Batch, Frozen, Loss, heldout_loss, optimizer, train
from crosslora_jax.eval import load_model, logits

VOCAB = 64


def _pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    src_cfg = synthetic.model_config("llama", hidden=32, intermediate=48, heads=4, kv_heads=2, layers=2, vocab=VOCAB)
    tgt_cfg = synthetic.model_config("qwen2", hidden=24, intermediate=40, heads=3, kv_heads=1, layers=3, vocab=VOCAB)
    src = synthetic.write_model(tmp_path / "src", src_cfg, synthetic.model_tensors(src_cfg, seed=0))
    tgt = synthetic.write_model(tmp_path / "tgt", tgt_cfg, synthetic.model_tensors(tgt_cfg, seed=1))
    lora = synthetic.write_adapter(tmp_path / "lora", src_cfg, seed=2, roles=("q", "v", "down"), rank=4, alpha=128)
    return src, tgt, lora


def _setup(tmp_path: Path, learn: str, kd: str = "full", init: str = "cross_lora"):
    src, tgt, lora_dir = _pair(tmp_path)
    src_cfg, tgt_cfg = read_model_config(src), read_model_config(tgt)
    adapter = read_adapter(lora_dir, src_cfg)
    options = TransferOptions(method="truncate" if init == "zero" else init)
    (result,) = run_transfer(src_cfg, tgt_cfg, [adapter], options)
    subspaces = None
    if learn == "transform":
        roles = sorted({w.role for w in result.written})
        subspaces = role_subspaces(src_cfg, tgt_cfg, roles, options.svd)
    student = build_student(
        learn, init == "zero", adapter, tgt_cfg, result.written, result.factors,
        result.layer_map.target_to_source, subspaces, seed=0,
    )  # fmt: skip
    spec_s, params_s = load_model(src)
    spec_t, params_t = load_model(tgt)
    params_s, params_t = jax.tree.map(jnp.asarray, (params_s, params_t))
    frozen = Frozen(params_t, params_s, source_lora(adapter, src_cfg), student.fixed)
    obj = Loss(kd, learn, 0.0, spec_t, spec_s)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, VOCAB, (24, 9)).astype(np.int32)
    data = as_batch(tokens)
    if kd in ("shared", "bytes"):  # as if the vocabularies differed: the teacher reads 11 positions
        if kd == "shared":  # 40 tokens are shared
            maps = tuple(jnp.asarray(rng.permutation(VOCAB)[:40].astype(np.int32)) for _ in range(2))
        else:  # each token's first byte, from a few values (several tokens per byte), or none (256)
            maps = tuple(jnp.asarray(rng.choice([32, 97, 98, 99, 256], VOCAB).astype(np.int32)) for _ in range(2))
        frozen = frozen._replace(vocab_maps=maps)
        obj = Loss(kd, learn, 0.0, spec_t, spec_s, sequence_weight=0.0)
        positions = rng.integers(-1, 11, data.mask.shape).astype(np.int32)
        data = data._replace(teacher_inputs=rng.integers(0, VOCAB, (24, 11)).astype(np.int32),
                             teacher_positions=positions)  # fmt: skip
    return student, frozen, obj, data, result


def _run(obj, student: Student, frozen: Frozen, data: Batch, steps: int, **kw) -> object:
    opt = optimizer(steps, 2e-2, 2, 0.0, 1.0)
    return train(obj, student, frozen, data, None, steps=steps, batch_size=8, opt=opt, seed=0, log_every=2,
                 progress=Progress(), **kw)  # fmt: skip


@pytest.mark.parametrize(
    ("learn", "kd"),
    [
        ("lora", "full"),
        ("transform", "full"),
        ("lora", "delta"),
        ("lora", "product"),
        ("lora", "shared"),
        ("lora", "bytes"),
    ],
)
def test_only_the_student_moves_and_the_objective_falls(tmp_path: Path, learn: str, kd: str) -> None:
    student, frozen, obj, data, _ = _setup(tmp_path, learn, kd)
    frozen_before = jax.tree.map(np.array, frozen)
    start = jax.tree.map(np.array, student.trainable)
    before = heldout_loss(obj, student.trainable, frozen, data, 8)
    fitted = _run(obj, student, frozen, data, steps=16)
    after = heldout_loss(obj, fitted.trainable, frozen, data, 8)
    assert after < 0.8 * before, (before, after)
    for x, y in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen), strict=True):
        np.testing.assert_array_equal(x, np.asarray(y))  # bit-identical
    moved = [not np.array_equal(x, np.asarray(y)) for x, y in zip(jax.tree.leaves(start),
                                                                  jax.tree.leaves(fitted.trainable), strict=True)]  # fmt: skip
    assert all(moved)
    assert fitted.tokens == 16 * 8 * data.inputs.shape[1]


@pytest.mark.parametrize("kd", list(OBJECTIVES))
def test_each_objective_is_its_float64_reference(tmp_path: Path, kd: str) -> None:
    """The step's loss, through the objectives table, against a float64 re-derivation from each
    model's logits; shared/bytes: the teacher on its own inputs, compared where the positions say."""
    student, frozen, obj, data, _ = _setup(tmp_path, "lora", kd)
    value = heldout_loss(obj, student.trainable, frozen, data, 8)
    # float32 round-off of log-probabilities of V = 64 tokens, summed over the positions' terms
    assert abs(value - _reference(obj, student, frozen, data)) <= 5e-5 * (1 + value)
    if obj.sequence_weight == 0:  # shared, bytes: with the cross-entropy beside the KL as well
        with_ce = dataclasses.replace(obj, sequence_weight=0.25)
        value = heldout_loss(with_ce, student.trainable, frozen, data, 8)
        assert abs(value - _reference(with_ce, student, frozen, data)) <= 5e-5 * (1 + value)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def _kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    lp, lq = _log_softmax(teacher_logits), _log_softmax(student_logits)
    return float((np.exp(lp) * (lp - lq)).sum())


def _by_byte(z: np.ndarray, first: np.ndarray) -> np.ndarray:
    out = np.zeros(257)
    np.add.at(out, first, np.exp(_log_softmax(z)))
    return np.log(np.maximum(out, 1e-300))


# Per objective, its term at one counted position in float64: (logits, batch row b, position t,
# loss settings, vocabulary maps) → (term, whether it counts). Every entry of OBJECTIVES needs one.
def _one_vocabulary(teacher: str):
    def term(z, b, t, obj, maps):
        if teacher == "full":
            want = z["source_lora"][b, t]
        elif teacher == "delta":
            want = z["target"][b, t] + z["source_lora"][b, t] - z["source"][b, t]
        else:  # product: the geometric mix
            w = obj.product_weight
            want = (1 - w) * z["target"][b, t] + w * z["source_lora"][b, t]
        return _kl(want, z["student"][b, t]), True

    return term


def _aligned(kind: str):
    def term(z, b, t, obj, maps):
        u = z["positions"][b, t]
        if u < 0:
            return 0.0, False
        teacher, student = z["teacher_own"][b, u], z["student"][b, t]
        if kind == "shared":
            lp, lq = _log_softmax(teacher[maps[0]]), _log_softmax(student[maps[1]])
        else:
            lp, lq = _by_byte(teacher, maps[0]), _by_byte(student, maps[1])
        return float((np.exp(lp) * (lp - lq)).sum()), True

    return term


REFERENCES = {
    "full": _one_vocabulary("full"),
    "delta": _one_vocabulary("delta"),
    "product": _one_vocabulary("product"),
    "sequence": lambda z, b, t, obj, maps: (0.0, False),  # the cross-entropy alone
    "shared": _aligned("shared"),
    "bytes": _aligned("bytes"),
}
CE_WEIGHT = {"full": 0.0, "delta": 0.0, "product": 0.0, "sequence": 1.0}  # else the objective's sequence_weight


def test_every_objective_has_a_float64_reference() -> None:
    assert set(REFERENCES) == set(OBJECTIVES)


def _reference(obj: Loss, student: Student, frozen: Frozen, data: Batch) -> float:
    """The objective's loss (mean over counted positions of its per-position term, + w × CE where
    it has one) in float64 from each model's logits, one position at a time."""
    lora = student_lora(obj.learn, student.trainable, frozen.fixed)

    def z64(spec, params, inputs, lora=None) -> np.ndarray:
        return np.asarray(logits(spec, params, jnp.asarray(inputs), lora), np.float64)

    z = {
        "student": z64(obj.spec_target, frozen.target, data.inputs, lora),
        "target": z64(obj.spec_target, frozen.target, data.inputs),
        "source": z64(obj.spec_source, frozen.source, data.inputs),
        "source_lora": z64(obj.spec_source, frozen.source, data.inputs, frozen.source_lora),
    }
    if data.teacher_inputs is not None:
        z["teacher_own"] = z64(obj.spec_source, frozen.source, data.teacher_inputs, frozen.source_lora)
        z["positions"] = np.asarray(data.teacher_positions)
    maps = None if frozen.vocab_maps is None else [np.asarray(x) for x in frozen.vocab_maps]
    terms, ce = [], []
    for b, t in zip(*np.nonzero(np.asarray(data.mask)), strict=True):
        ce.append(-_log_softmax(z["student"][b, t])[data.targets[b, t]])
        term, counted = REFERENCES[obj.kd](z, b, t, obj, maps)
        if counted:
            terms.append(term)
    w = CE_WEIGHT.get(obj.kd, obj.sequence_weight)
    return float((np.mean(terms) if terms else 0.0) + w * np.mean(ce))


def test_the_lora_student_starts_as_the_init_transfer(tmp_path: Path) -> None:
    student, *_, result = _setup(tmp_path, "lora")
    got = written_factors(student, student.trainable)
    assert got.keys() == dict(result.factors).keys()
    for module, (a, b) in result.factors.items():
        np.testing.assert_array_equal(got[module][0], a)
        np.testing.assert_array_equal(got[module][1], b)


def test_the_transform_student_starts_as_the_init_inside_the_target_subspaces(tmp_path: Path) -> None:
    student, *_, result = _setup(tmp_path, "transform")
    got = written_factors(student, student.trainable)
    for w in student.written:
        a, b = (x.astype(np.float64) for x in result.factors[w])
        f = student.fixed[w.role]
        ut, vt = (np.asarray(f[k][w.layer], np.float64) for k in ("ut", "vt"))
        want = (ut @ ut.T @ b) @ (a @ vt @ vt.T)  # ΔW of the init, projected onto the target's subspaces
        mine = got[w][1].astype(np.float64) @ got[w][0]
        scale = np.linalg.norm(want) + 1e-3 * np.linalg.norm(b @ a)
        assert np.linalg.norm(mine - want) <= 1e-3 * scale, w


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    student, frozen, obj, data, _ = _setup(tmp_path, "lora")
    whole = _run(obj, student, frozen, data, steps=6)
    run_dir = tmp_path / "ckpt"
    opt = optimizer(6, 2e-2, 2, 0.0, 1.0)

    class Stop(Exception):
        pass

    def save_then_stop(snapshot: _train.Snapshot) -> None:
        _checkpoint.save(run_dir, snapshot)
        raise Stop

    with pytest.raises(Stop):
        train(obj, student, frozen, data, None, steps=6, batch_size=8, opt=opt, seed=0, log_every=2,
              progress=Progress(), on_checkpoint=save_then_stop, checkpoint_every=3)  # fmt: skip
    start = _checkpoint.restore(run_dir, student.trainable, opt)
    assert start is not None and start.step == 3
    resumed = train(obj, student, frozen, data, None, steps=6, batch_size=8, opt=opt, seed=0, log_every=2,
                    progress=Progress(), start=start)  # fmt: skip
    for x, y in zip(jax.tree.leaves(whole.trainable), jax.tree.leaves(resumed.trainable), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7 * float(np.abs(x).max()))
    # the resumed run reports the whole run: its curve (steps 2, 4, 6) and every token
    assert [s for s, _ in resumed.losses] == [s for s, _ in whole.losses] == [2, 4, 6]
    assert resumed.tokens == whole.tokens
    np.testing.assert_allclose([v for _, v in resumed.losses[:1]], [v for _, v in whole.losses[:1]], rtol=1e-6)


def _plateau_run(obj, student, frozen, data, steps: int, rule: PlateauRule, **kw) -> _train.TrainResult:
    def monitor(trainable) -> float:
        return heldout_loss(obj, trainable, frozen, data, 8)

    return train(obj, student, frozen, data, None, steps=steps, batch_size=8,
                 opt=_train.plateau_optimizer(0.0, 1.0), seed=0, log_every=2, progress=Progress(), rule=rule,
                 monitor=monitor, **kw)  # fmt: skip


# a rate so high that the objective stops falling soon: the rule must cut it, then stop
RULE = PlateauRule(learning_rate=0.3, warmup_steps=1, eval_every=2, patience=2, min_delta=1e-3, decay=0.3, decays=1)


def test_the_plateau_rule_stops_early_and_keeps_the_best_parameters(tmp_path: Path) -> None:
    student, frozen, obj, data, _ = _setup(tmp_path, "lora")
    fitted = _plateau_run(obj, student, frozen, data, steps=400, rule=RULE)
    assert fitted.stop == "plateau" and fitted.steps_run < 400, fitted.heldout
    steps, values = zip(*fitted.heldout, strict=True)
    assert steps[0] == 0 and list(steps) == sorted(steps) and steps[-1] == fitted.steps_run
    # the parameters kept are those of the best evaluation (the rule's own re-derivation here)
    best = int(np.argmin(values))
    assert fitted.best_step == steps[best]
    kept = heldout_loss(obj, fitted.trainable, frozen, data, 8)
    np.testing.assert_allclose(kept, values[best], rtol=1e-5)
    assert kept < values[0]  # it learnt something before the plateau
    assert _plateaus(values, RULE) == RULE.decays + 1  # the last plateau is the stop, at the curve's end


def _plateaus(values: Sequence[float], rule: PlateauRule) -> int:
    """The rule re-derived in NumPy: an improvement falls below the last one by more than
    max(min_delta × it, 2σ), σ = 1.4826 × MAD of the successive differences of the last 12 values
    since the last cut, / √2; `patience` evaluations without one are a plateau (a cut, or the stop)."""
    reference, since, plateaus, recent = np.inf, 0, 0, []
    for i, v in enumerate(values):
        recent = [*recent, v][-12:]
        d = np.diff(recent)
        sigma = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2) if d.size >= 3 else 0.0
        if not np.isfinite(reference) or v < reference - max(rule.min_delta * reference, 2 * sigma):
            reference, since = v, 0
            continue
        since += 1
        if since == rule.patience:
            plateaus, since, recent = plateaus + 1, 0, recent[-1:]
            if plateaus == rule.decays + 1:
                assert i == len(values) - 1, "training went on after the stop"
    return plateaus


def test_a_resumed_plateau_run_keeps_its_patience_and_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    student, frozen, obj, data, _ = _setup(tmp_path, "lora")
    whole = _plateau_run(obj, student, frozen, data, steps=400, rule=RULE)
    cut = whole.steps_run - 3  # late in the run: the patience count and a cut are in the checkpoint
    run_dir = tmp_path / "ckpt"
    opt = _train.plateau_optimizer(0.0, 1.0)

    class Stop(Exception):
        pass

    def save_at_cut(snapshot: _train.Snapshot) -> None:
        if snapshot.step == cut:
            _checkpoint.save(run_dir, snapshot)
            raise Stop

    with pytest.raises(Stop):
        _plateau_run(obj, student, frozen, data, steps=400, rule=RULE, on_checkpoint=save_at_cut, checkpoint_every=1)
    start = _checkpoint.restore(run_dir, student.trainable, opt, with_best=True)
    assert start is not None and start.step == cut and start.state.plateau is not None
    resumed = _plateau_run(obj, student, frozen, data, steps=400, rule=RULE, start=start)
    assert (resumed.stop, resumed.steps_run, resumed.best_step) == (whole.stop, whole.steps_run, whole.best_step)
    assert [s for s, _ in resumed.heldout] == [s for s, _ in whole.heldout]
    np.testing.assert_allclose([v for _, v in resumed.heldout], [v for _, v in whole.heldout], rtol=1e-5)
    assert [s for s, _ in resumed.losses] == [s for s, _ in whole.losses] and resumed.tokens == whole.tokens
    for x, y in zip(jax.tree.leaves(whole.trainable), jax.tree.leaves(resumed.trainable), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6 * float(np.abs(x).max()))


def test_checkpoints_come_by_time_at_progress_lines(tmp_path: Path) -> None:
    student, frozen, obj, data, _ = _setup(tmp_path, "lora")
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every reading of the clock is a second later
        return now[0]

    saved: list[int] = []
    _run(obj, student, frozen, data, steps=12, on_checkpoint=lambda s: saved.append(s.step),
         checkpoint_seconds=1e6, clock=clock)  # fmt: skip
    assert saved == []  # never due
    _run(obj, student, frozen, data, steps=12, on_checkpoint=lambda s: saved.append(s.step),
         checkpoint_seconds=3.0, clock=clock)  # fmt: skip
    assert saved and all(s % 2 == 0 for s in saved) and 12 not in saved  # at progress lines, not at the end
