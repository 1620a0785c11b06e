"""`distill` end to end on tiny models with byte-level tokenizers: files in, a PEFT adapter and
report out; the different-tokenizer path; interrupt then rerun = the uninterrupted result; bad
input through the command line (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from crosslora_jax import (
    OptionsError,
    Progress,
    SvdSettings,
    TransferOptions,
    TransferReport,
    read_adapter,
    read_model_config,
    synthetic,
)
from crosslora_jax.distillation import DistillOptions, distill

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(prompts=12, heldout=4, gen_len=6, steps=4, batch_size=4, log_every=2, checkpoint_every=2)


def _models(tmp_path: Path, target_tokenizer: str = "bytes") -> dict[str, Path]:
    vocab_t = synthetic.tokenizer_vocab_size(target_tokenizer)
    src_cfg = synthetic.model_config("llama", hidden=32, intermediate=48, heads=4, kv_heads=2, layers=2, vocab=256)
    tgt_cfg = synthetic.model_config("gemma2", hidden=24, intermediate=40, heads=3, kv_heads=1, layers=3, vocab=vocab_t)
    src = synthetic.write_model(tmp_path / "src", src_cfg, synthetic.model_tensors(src_cfg, seed=0))
    tgt = synthetic.write_model(tmp_path / "tgt", tgt_cfg, synthetic.model_tensors(tgt_cfg, seed=1))
    synthetic.write_tokenizer(src, "bytes")
    synthetic.write_tokenizer(tgt, target_tokenizer)
    lora = synthetic.write_adapter(tmp_path / "lora", src_cfg, seed=2, roles=("q", "v", "down"), rank=4, alpha=64)
    return {"source": src, "target": tgt, "adapter": lora, "output": tmp_path / "out"}


def _distill(p: dict[str, Path], **kw: object) -> TransferReport:
    return distill(p["source"], p["target"], p["adapter"], p["output"], DistillOptions(**{**SMALL, **kw}))


def test_distill_writes_an_adapter_for_the_target_with_its_report(tmp_path: Path) -> None:
    p = _models(tmp_path)
    report = _distill(p, transfer=TransferOptions(svd=SvdSettings(rank=8)))
    adapter = read_adapter(p["output"], read_model_config(p["target"]))
    assert {m.role for m in adapter.modules.values()} == {"q", "v", "down"}
    assert len(adapter.modules) == 3 * 3  # every target layer (linear map 2 → 3)
    saved = json.loads((p["output"] / "crosslora_report.json").read_text())
    section = saved["distill"]
    assert section == json.loads(json.dumps(report.to_json()["distill"]))
    # the section's layout, keys in order (the init transfer's settings where they stood as flat fields)
    assert list(section) == ["settings", "objective", "vocabulary", "loss_curve", "heldout", "stopping",
                             "tokens_seen", "resumed_from_step", "seconds"]  # fmt: skip
    # early stopping (the default): evaluated at the start and at the end (eval_every 50 > 4 steps)
    assert list(section["stopping"]) == ["steps_run", "reason", "best_step", "monitored", "heldout_curve"]
    assert section["stopping"]["reason"] == "step cap" and section["stopping"]["steps_run"] == 4
    assert [p["step"] for p in section["stopping"]["heldout_curve"]] == [0, 4]
    assert section["stopping"]["monitored"] == "held-out objective + 1 × anchor KL"
    assert list(section["settings"])[:8] == ["init", "learn", "kd", "product_weight", "sequence_weight", "svd",
                                             "layer_map", "prompts"]  # fmt: skip
    assert list(section["settings"])[-1] == "output_dtype" and section["settings"]["svd"]["rank"] == 8
    assert list(section["heldout"]) == ["sequences", "measure", "before", "after"]
    assert list(section["seconds"]) == ["init_transfer", "teacher_samples", "train"]
    assert section["vocabulary"] == "shared" and section["objective"] == "full"  # --kd=auto on one vocabulary
    assert report.distill.settings.kd == section["settings"]["kd"] == "full"
    assert [c["step"] for c in section["loss_curve"]] == [p.step for p in report.distill.loss_curve] == [2, 4]
    assert report.distill.tokens_seen == 4 * 4 * 6  # steps × batch × positions (prompt 1 + 6 sampled − 1)
    assert report.distill.heldout.objective.before > 0 and report.distill.heldout.objective.after > 0
    assert section["settings"]["steps"] == 4


def test_distilling_onto_phi3_writes_its_fused_modules(tmp_path: Path) -> None:
    p = _models(tmp_path)
    phi3 = synthetic.model_config("phi3", hidden=24, intermediate=40, heads=3, kv_heads=1, layers=2, vocab=256)
    p["target"] = synthetic.write_model(tmp_path / "phi3", phi3, synthetic.model_tensors(phi3, seed=4))
    synthetic.write_tokenizer(p["target"], "bytes")
    _distill(p, learn="transform", transfer=TransferOptions(svd=SvdSettings(rank=8)))
    adapter = read_adapter(p["output"], read_model_config(p["target"]))
    # read back split by role; qkv_proj carries k as well, with a zero block: k was not adapted
    assert {m.role for m in adapter.modules.values()} == {"q", "k", "v", "down"}
    k_modules = [m for m in adapter.modules.values() if m.role == "k"]
    assert not np.any(adapter.read_factors(k_modules)[1])
    stored = load_file(str(p["output"] / "adapter_model.safetensors"))
    assert any("qkv_proj.lora_B" in k for k in stored) and not any("q_proj" in k for k in stored)


def test_different_tokenizers_take_the_bytes_sequence_or_shared_objective(tmp_path: Path) -> None:
    p = _models(tmp_path, target_tokenizer="bpe")
    for kd in ("full", "delta", "product"):  # the KL objectives over one whole vocabulary
        with pytest.raises(OptionsError, match=r"--kd.*use --kd=sequence, shared or bytes"):
            _distill(p, kd=kd)
        assert not p["output"].exists()
    section = _distill(p, init="truncate").to_json()["distill"]  # --kd=auto: bytes, when the vocabularies differ
    assert section["vocabulary"] == "different" and section["settings"]["kd"] == "bytes"
    assert section["objective"].startswith("bytes") and "shared_tokens" not in section["alignment"]
    assert 0.5 < section["alignment"]["positions_aligned"] < 1  # BOS and inside merged tokens: no match
    assert 0 < section["heldout"]["bytes_kl_before"] < section["heldout"]["before"]  # the cross-entropy adds
    assert section["heldout"]["measure"].startswith("next-byte KL")
    p["output"] = tmp_path / "out_shared"
    shared = _distill(p, kd="shared", init="truncate").to_json()["distill"]
    assert shared["objective"].startswith("shared")
    # bytes ↔ bpe share the 256 byte tokens; the bpe merges are the student's alone
    assert shared["alignment"] == {
        **section["alignment"],
        "shared_tokens": 256,
        "shared_of_student_vocabulary": 256 / 290,
    }
    assert 0 < shared["heldout"]["shared_kl_before"] < shared["heldout"]["before"]
    assert shared["heldout"]["measure"].startswith("shared-vocabulary KL")
    p["output"] = tmp_path / "out_sequence"
    sequence = _distill(p, kd="sequence", init="truncate").to_json()["distill"]
    assert "re-tokenized" in sequence["objective"] and "alignment" not in sequence


def test_shared_needs_tokenizers_that_differ(tmp_path: Path) -> None:
    p = _models(tmp_path)
    for kd in ("shared", "bytes"):
        with pytest.raises(OptionsError, match=r"--kd.*share one"):
            _distill(p, kd=kd)
        assert not p["output"].exists()


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    p = _models(tmp_path)

    class StopAfterCheckpoint(Progress):
        def step(self, cost: float, label: str) -> None:
            super().step(cost, label)
            if label.startswith("step 4/"):
                raise KeyboardInterrupt

    cache = tmp_path / "cache"
    options = DistillOptions(**{**SMALL, "steps": 6})
    with pytest.raises(KeyboardInterrupt):
        distill(p["source"], p["target"], p["adapter"], p["output"], options, cache_dir=cache,
                progress=StopAfterCheckpoint())  # fmt: skip
    assert not p["output"].exists()
    assert list((cache / "distill").glob("*/step_4")), "a checkpoint survives the interrupt"
    report = distill(p["source"], p["target"], p["adapter"], p["output"], options, cache_dir=cache)
    assert report.distill.resumed_from_step == 4
    assert not list((cache / "distill").iterdir()), "a finished run leaves no checkpoint"
    clean = distill(p["source"], p["target"], p["adapter"], tmp_path / "clean", options)
    # the resumed run's report tells the whole run's story: curve, tokens, evaluations
    assert [x.step for x in report.distill.loss_curve] == [x.step for x in clean.distill.loss_curve] == [2, 4, 6]
    np.testing.assert_allclose([x.loss for x in report.distill.loss_curve],
                               [x.loss for x in clean.distill.loss_curve], rtol=1e-5)  # fmt: skip
    assert report.distill.tokens_seen == clean.distill.tokens_seen
    assert report.distill.stopping.to_json()["heldout_curve"][0]["step"] == 0
    assert [x.step for x in report.distill.stopping.curve] == [x.step for x in clean.distill.stopping.curve]
    resumed, fresh = (load_file(str(f / "adapter_model.safetensors")) for f in (p["output"], tmp_path / "clean"))
    assert resumed.keys() == fresh.keys()
    for key in fresh:
        np.testing.assert_allclose(resumed[key], fresh[key], rtol=1e-5, atol=1e-6 * np.abs(fresh[key]).max())
    assert clean.distill.resumed_from_step == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crosslora_jax.distill", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def _flags(p: dict[str, Path], *extra: str) -> list[str]:
    small = [f"--{k}={v}" for k, v in SMALL.items()]
    return [f"--source_model={p['source']}", f"--target_model={p['target']}", f"--adapter={p['adapter']}",
            f"--output={p['output']}", "--svd_rank=8", *small, *extra]  # fmt: skip


def test_the_command_prints_progress_and_a_summary(tmp_path: Path) -> None:
    p = _models(tmp_path)
    result = _cli(*_flags(p, "--kd=delta", "--learn=transform"))
    assert result.returncode == 0, result.stderr
    assert "step 2/4 loss" in result.stderr and "tokens/s" in result.stderr and "ETA" in result.stderr
    assert "distill: delta" in result.stdout and "held-out" in result.stdout
    assert "reached the --steps cap (4) before a plateau; kept step " in result.stdout  # --early_stopping's default
    assert "  verdict: the cross_lora init alone is " in result.stdout and "distil instead" not in result.stdout
    # sampling: one line per batch with an ETA, its count explained (--prompts + --heldout)
    assert "teacher (12 + 4 held out): 16/16 sequences sampled; elapsed " in result.stderr, result.stderr
    held = json.loads((p["output"] / "crosslora_report.json").read_text())["distill"]["heldout"]
    assert {"before", "after", "kl_to_teacher_before", "kl_to_teacher_after"} <= held.keys()
    assert (p["output"] / "adapter_model.safetensors").is_file()


def test_sigterm_then_the_same_command_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    p = _models(tmp_path)
    cache = tmp_path / "cache"
    flags = _flags(p, "--steps=400", "--checkpoint_every=2", f"--cache_dir={cache}")
    proc = subprocess.Popen([sys.executable, "-m", "crosslora_jax.distill", *flags], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "step 4/400" in line:
            break
    else:
        pytest.fail(f"no progress line; exit {proc.wait()}")
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, rest
    assert "error: interrupted" in rest and not p["output"].exists()
    assert list((cache / "distill").glob("*/step_*")), "a checkpoint survives SIGTERM"
    again = _cli(*flags)
    assert again.returncode == 0, again.stderr
    assert "figures cover the whole run" in again.stdout, again.stdout
    resumed_from = json.loads((p["output"] / "crosslora_report.json").read_text())["distill"]["resumed_from_step"]
    assert resumed_from >= 4
    clean = tmp_path / "clean"
    assert _cli(*_flags({**p, "output": clean}, "--steps=400", "--checkpoint_every=2")).returncode == 0
    resumed, fresh = (load_file(str(f / "adapter_model.safetensors")) for f in (p["output"], clean))
    assert resumed.keys() == fresh.keys()
    for key in fresh:
        np.testing.assert_allclose(resumed[key], fresh[key], rtol=1e-5, atol=1e-6 * np.abs(fresh[key]).max())


def _one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("case", ["missing_tokenizer", "bad_prompts_file", "steps_0", "adapter_misfit"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path: Path, case: str) -> None:
    p = _models(tmp_path)
    extra: list[str] = []
    fragment = ""
    if case == "missing_tokenizer":
        (p["target"] / "tokenizer.json").unlink()
        fragment = "tokenizer"
    elif case == "bad_prompts_file":
        bad = tmp_path / "prompts.jsonl"
        bad.write_text('{"prompt": "ok"}\n{not json\n')
        extra, fragment = [f"--prompts_file={bad}"], "prompts.jsonl:2"
    elif case == "steps_0":
        extra, fragment = ["--steps=0"], "--steps"
    else:  # an adapter trained on another model: its shapes do not fit the source
        other = synthetic.model_config("llama", hidden=40, intermediate=48, heads=4, kv_heads=2, layers=2, vocab=256)
        p["adapter"] = synthetic.write_adapter(tmp_path / "other_lora", other, seed=3, roles=("q",), rank=4)
        fragment = "other_lora"
    before = sorted(x.relative_to(tmp_path) for x in tmp_path.rglob("*"))
    _one_line_error(_cli(*_flags(p, *extra)), fragment)
    assert sorted(x.relative_to(tmp_path) for x in tmp_path.rglob("*")) == before


def test_early_stopping_needs_held_out_samples() -> None:
    with pytest.raises(OptionsError, match=r"--heldout.*--early_stopping"):
        DistillOptions(heldout=0)
    assert DistillOptions(heldout=0, early_stopping=False).heldout == 0
