"""The public API gives no silent partial result: stacks that disagree with their `layers` are
refused, `options=None` means the defaults, every command has a console script, no extra repeats
a core dependency."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _tiny import ADAPTER, SOURCE, TARGET
from safetensors.numpy import load_file

import crosslora_jax as cl
from crosslora_jax import synthetic
from crosslora_jax.distillation import _run as distill_run
from crosslora_jax.eval import EvalOptions, evaluate, load_model, load_tokenizer
from crosslora_jax.eval import _tasks as eval_tasks

ROOT = Path(__file__).resolve().parents[1]


def _stacks(ws: Path) -> tuple[dict[str, cl.LoraStack], int]:
    return cl.load_lora_stacks(ws / ADAPTER, ws / SOURCE), cl.read_model_config(ws / TARGET).num_layers


def test_a_stack_whose_layers_and_leading_axis_disagree_is_refused_and_nothing_written(tiny_workspace, tmp_path):
    lora, depth_t = _stacks(tiny_workspace)
    q = lora["q"]  # the source's 2 layers; the target has 3
    grown = np.concatenate([q.a, q.a[:1]]), np.concatenate([q.b, q.b[:1]]), np.concatenate([q.scale, q.scale[:1]])
    assert depth_t == 3 and q.layers == (0, 1)
    # What README's snippet once did: 3 rows moved, `layers` still the source's (0, 1).
    with pytest.raises(
        cl.AdapterError, match=r"`layers` names 2 layers \(0, 1\) but the stack holds a 3, b 3, scale 3"
    ):
        cl.save_lora_stacks(tmp_path / "out", tiny_workspace / TARGET, {"q": q._replace(a=grown[0], b=grown[1],
                            scale=grown[2])}, like=tiny_workspace / ADAPTER)  # fmt: skip
    with pytest.raises(cl.AdapterError, match="scale 1"):
        cl.save_lora_stacks(tmp_path / "out", tiny_workspace / TARGET, {"q": q._replace(scale=q.scale[:1])},
                            like=tiny_workspace / ADAPTER)  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda s: s._replace(layers=(0, 3)), r"distinct target layers in \[0, 3\)"),
        (lambda s: s._replace(layers=(1, 1)), "distinct target layers"),
        (lambda s: s._replace(a=s.a[:, :, :-1]), "do not fit the target's"),
        (lambda s: s._replace(a=s.a[0]), r"must be \[L, k, n\] and \[L, m, k\] stacks"),
    ],
    ids=["layer_out_of_range", "layer_twice", "width", "not_stacked"],
)
def test_stacks_that_do_not_fit_the_target_are_refused(tiny_workspace, tmp_path, spoil, message):
    lora, _ = _stacks(tiny_workspace)
    # A stack of the target's own shapes (the source's q is 32 wide, the target's 48): zeros will do.
    m, n = cl.read_model_config(tiny_workspace / TARGET).shapes["q"]
    fits = cl.LoraStack(np.zeros((2, 4, n), np.float32), np.zeros((2, m, 4), np.float32), lora["q"].scale, (0, 2))
    cl.save_lora_stacks(tmp_path / "ok", tiny_workspace / TARGET, {"q": fits}, like=tiny_workspace / ADAPTER)
    with pytest.raises(cl.AdapterError, match=message):
        cl.save_lora_stacks(
            tmp_path / "out", tiny_workspace / TARGET, {"q": spoil(fits)}, like=tiny_workspace / ADAPTER
        )
    with pytest.raises(cl.AdapterError, match="not a role of the target"):
        cl.save_lora_stacks(tmp_path / "out", tiny_workspace / TARGET, {"qkv": fits}, like=tiny_workspace / ADAPTER)
    assert not (tmp_path / "out").exists()


def test_for_target_layers_follows_the_layer_map_and_skips_layers_the_lora_lacks():
    rng = np.random.default_rng(0)
    stack = cl.LoraStack(rng.standard_normal((3, 2, 5)), rng.standard_normal((3, 4, 2)), np.asarray([1.0, 2.0, 3.0]),
                         (1, 2, 4))  # fmt: skip  # a LoRA on source layers 1, 2 and 4 only
    source_of = [0, 1, 1, 2, None, 4]  # target layer j ← source layer source_of[j]
    moved = stack.for_target_layers(source_of)
    assert moved.layers == (1, 2, 3, 5)
    np.testing.assert_array_equal(moved.a, stack.a[[0, 0, 1, 2]])
    np.testing.assert_array_equal(moved.b, stack.b[[0, 0, 1, 2]])
    np.testing.assert_array_equal(moved.scale, [1.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize(("alpha", "rank", "rslora"), [(16, 4, False), (5, 3, False), (5, 3, True), (0.7, 3, True)])
def test_save_lora_stacks_writes_back_the_alpha_the_scale_came_from(tmp_path, alpha, rank, rslora):
    """A stack holds scale = α/k (α/√k with rslora); saving writes the adapter's own α back."""
    cfg = synthetic.model_config("llama", hidden=16, intermediate=24, heads=2, kv_heads=1, layers=2)
    model = synthetic.write_model(tmp_path / "m", cfg, synthetic.model_tensors(cfg, seed=0))
    lora = synthetic.write_adapter(tmp_path / "a", cfg, seed=1, roles=("q",), rank=rank, alpha=alpha,
                                   extra_config={"use_rslora": rslora})  # fmt: skip
    stacks = cl.load_lora_stacks(lora, model)
    want = np.float32(alpha / (np.sqrt(rank) if rslora else rank))
    np.testing.assert_array_equal(stacks["q"].scale, [want, want])
    cl.save_lora_stacks(tmp_path / "out", model, stacks, like=lora)
    saved = cl.read_adapter(tmp_path / "out", cl.read_model_config(model))
    alphas = [m.alpha for m in saved.modules.values()]
    assert alphas == [alpha] * 2 if float(alpha).is_integer() else alphas == pytest.approx([alpha] * 2, rel=1e-6)
    assert all(np.float32(saved.scale(m)) == want for m in saved.modules.values())


def test_options_none_means_the_defaults_for_transfer_and_run_transfer(tiny_workspace, tmp_path):
    ws = tiny_workspace
    (none,) = cl.transfer(ws / SOURCE, ws / TARGET, [ws / ADAPTER], tmp_path / "none", None)
    (default,) = cl.transfer(ws / SOURCE, ws / TARGET, [ws / ADAPTER], tmp_path / "default", cl.TransferOptions())
    settings = ("method", "svd", "layer_map", "min_similarity", "output_dtype")
    assert [none.to_json()[k] for k in settings] == [default.to_json()[k] for k in settings]
    a, b = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("none", "default"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    source, target = cl.read_model_config(ws / SOURCE), cl.read_model_config(ws / TARGET)
    (result,) = cl.run_transfer(source, target, [cl.read_adapter(ws / ADAPTER, source)])  # options omitted
    assert len(result.written) == len(none.modules)


def test_options_none_means_the_defaults_for_distill(tiny_workspace, tmp_path, monkeypatch):
    # The defaults' 300 steps × 1,024 prompts are the marked suite's (the README snippet); here the
    # defaults are shrunk where `distill` looks them up, so None must reach DistillOptions().
    small = functools.partial(cl.DistillOptions, steps=2, prompts=8, heldout=4, gen_len=4, batch_size=4)
    monkeypatch.setattr(distill_run, "DistillOptions", small)
    report = cl.distill(
        tiny_workspace / SOURCE, tiny_workspace / TARGET, tiny_workspace / ADAPTER, tmp_path / "o", None
    )
    assert report.to_json()["distill"]["settings"]["steps"] == 2


def test_options_none_means_the_defaults_for_evaluate(tiny_workspace):
    task = tiny_workspace / "my_task.jsonl"
    none = evaluate(tiny_workspace / TARGET, task, None, None)
    assert none == evaluate(tiny_workspace / TARGET, task, None, EvalOptions())
    spec, params = load_model(tiny_workspace / TARGET)
    tokenizer = load_tokenizer(tiny_workspace / TARGET)
    loaded = eval_tasks.read_task(task, "auto")
    result = eval_tasks.evaluate_task(spec, params, tokenizer, loaded, None)
    assert result == {k: v for k, v in none.items() if k not in ("model", "adapter")}


def test_every_command_has_a_console_script_and_no_extra_repeats_a_core_dependency():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python ≥ 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    commands = sorted(p.stem for p in (ROOT / "crosslora_jax/cli").glob("*.py") if not p.stem.startswith("_"))
    assert commands == ["demo", "distill", "evaluate", "transfer"]
    assert {f"crosslora-{c}": f"crosslora_jax.cli.{c}:run" for c in commands} == project["scripts"]

    def name(requirement: str) -> str:
        return requirement.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()

    core = {name(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        assert not core & {name(r) for r in requirements}, f"extra {extra!r} repeats a core dependency"


def test_the_distill_console_script_is_installed_and_runs():
    script = shutil.which("crosslora-distill", path=str(Path(sys.executable).parent))
    assert script, "crosslora-distill is not installed beside this Python: reinstall the package (pip install -e .)"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--kd" in out.stdout, out.stderr[-2000:]
