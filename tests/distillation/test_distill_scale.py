"""Distillation at scale on tiny models: 8 CPU devices (data parallel, frozen weights sharded
FSDP-style, checkpoints of replicated arrays) and 2 `--distributed` processes give the adapter of
one device; bfloat16 frozen weights keep the loss within bfloat16 round-off of float32 and the
trainables float32."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from _xla_env import xla_flags
from safetensors.numpy import load_file

from crosslora_jax import Progress, TransferOptions, read_adapter, read_model_config, run_transfer, synthetic
from crosslora_jax.distillation import DistillOptions, _train, distill
from crosslora_jax.distillation._student import build_student, source_lora
from crosslora_jax.distillation._teacher import as_batch
from crosslora_jax.distillation._train import Frozen, Loss, optimizer, train
from crosslora_jax.eval import load_model

ROOT = Path(__file__).resolve().parents[2]
# Every weight dimension divides 8, so every matrix is split over 8 devices; batch 4 < 8 devices
# also exercises the zero-mask padding rows.
OPTIONS = dict(prompts=12, heldout=4, gen_len=6, steps=6, batch_size=4, log_every=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    src_cfg = synthetic.model_config("llama", hidden=32, intermediate=48, heads=4, kv_heads=2, layers=2, vocab=256)
    tgt_cfg = synthetic.model_config("gemma2", hidden=24, intermediate=40, heads=3, kv_heads=1, layers=3, vocab=256)
    src = synthetic.write_model(root / "src", src_cfg, synthetic.model_tensors(src_cfg, seed=0))
    tgt = synthetic.write_model(root / "tgt", tgt_cfg, synthetic.model_tensors(tgt_cfg, seed=1))
    synthetic.write_tokenizer(src, "bytes")
    synthetic.write_tokenizer(tgt, "bytes")
    lora = synthetic.write_adapter(root / "lora", src_cfg, seed=2, roles=("q", "v", "down"), rank=4, alpha=64)
    return {"source": src, "target": tgt, "adapter": lora}


@pytest.fixture(scope="module")
def one_device(models, tmp_path_factory) -> dict[str, np.ndarray]:
    """The uninterrupted single-device result everything else must reproduce."""
    assert jax.device_count() == 1
    out = tmp_path_factory.mktemp("one") / "out"
    distill(models["source"], models["target"], models["adapter"], out, DistillOptions(**OPTIONS))
    return load_file(str(out / "adapter_model.safetensors"))


def _assert_same_adapter(folder: Path, reference: dict[str, np.ndarray]) -> None:
    got = load_file(str(folder / "adapter_model.safetensors"))
    assert got.keys() == reference.keys()
    for key, want in reference.items():
        # Batch sums run in another order; a factor's round-off is relative to its largest entry.
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=key)


# Run in a fresh process: distill interrupted right after the step-4 checkpoint, then rerun (it
# resumes), with train_step wrapped to record where its inputs and outputs live.
_RESUMED_RUN = """
import json, sys
import jax
from crosslora_jax import Progress
from crosslora_jax.distillation import DistillOptions, _train, distill

args = json.loads(sys.argv[1])
if args["process_id"] is not None:
    jax.distributed.initialize(args["coordinator"], 2, args["process_id"])
seen = {}
step = _train.train_step

def spy(obj, opt, trainable, opt_state, frozen, batch, anchor, *rest):
    out = step(obj, opt, trainable, opt_state, frozen, batch, anchor, *rest)
    leaves = jax.tree_util.tree_flatten_with_path(frozen)[0]
    seen["frozen_split"] = {jax.tree_util.keystr(k): x.size // x.addressable_shards[0].data.size for k, x in leaves}
    seen["batch_rows_per_device"] = batch.inputs.addressable_shards[0].data.shape[0]
    seen["batch_devices"] = len(batch.inputs.sharding.device_set)
    seen["state_replicated"] = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(out))
    return out

_train.train_step = spy

class StopAfterStep4(Progress):
    def step(self, cost, label):
        super().step(cost, label)
        if label.startswith("step 4/"):
            raise KeyboardInterrupt

options = DistillOptions(**args["options"])
paths = [args[k] for k in ("source", "target", "adapter", "output")]
try:
    distill(*paths, options, cache_dir=args["cache"], progress=StopAfterStep4())
except KeyboardInterrupt:
    pass
if args["resume"]:
    seen["resumed_from_step"] = distill(*paths, options, cache_dir=args["cache"]).distill.resumed_from_step
with open(args["seen"], "w") as f:
    json.dump(seen, f)
"""


def _args(models: dict[str, Path], tmp_path: Path, **extra: object) -> dict[str, object]:
    return {**{k: str(v) for k, v in models.items()}, "output": str(tmp_path / "out"), "cache": str(tmp_path / "cache"),
            "seen": str(tmp_path / "seen.json"), "options": OPTIONS, "process_id": None, "resume": True, **extra}  # fmt: skip


def test_eight_devices_distil_the_same_adapter_as_one(models, one_device, tmp_path) -> None:
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8"), "JAX_PLATFORMS": "cpu"}
    args = _args(models, tmp_path)
    subprocess.run([sys.executable, "-c", _RESUMED_RUN, json.dumps(args)], check=True, env=env, cwd=ROOT, timeout=600)
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["resumed_from_step"] == 4, "the sharded checkpoint was restored"
    _assert_same_adapter(tmp_path / "out", one_device)
    # Data parallel: batch 4 padded to 8 rows, one per device; the updated state stays replicated.
    assert seen["batch_devices"] == 8 and seen["batch_rows_per_device"] == 1
    assert seen["state_replicated"]
    # FSDP: every frozen matrix is split 8 ways (each has a dimension 8 divides); vectors are whole.
    split = seen["frozen_split"]
    vectors = [k for k in split if "norm" in k or k.endswith((".scale", "['scale']"))]  # per-layer LoRA scales
    matrices = [k for k in split if k not in vectors]
    assert len(matrices) >= 2 * (7 + 1) + 3 * 2, sorted(split)  # both models' projections and embeddings, the LoRA
    assert {k: split[k] for k in matrices} == dict.fromkeys(matrices, 8)
    assert {k: split[k] for k in vectors} == dict.fromkeys(vectors, 1)


_SHARED_RUN = """
import json, sys
import jax
from crosslora_jax.distillation import DistillOptions, distill

args = json.loads(sys.argv[1])
report = distill(*(args[k] for k in ("source", "target", "adapter", "output")), DistillOptions(**args["options"]))
print(json.dumps([jax.device_count(), report.distill.heldout.to_json()]))
"""


def test_eight_devices_distil_across_tokenizers_like_one(models, tmp_path) -> None:
    """`--kd=shared` (the teacher's own tokenization, gathered at aligned positions, in every
    device's rows of the batch): 8 devices write one device's adapter."""
    bpe = tmp_path / "bpe"
    cfg = synthetic.model_config("gemma2", hidden=24, intermediate=40, heads=3, kv_heads=1, layers=3,
                                 vocab=synthetic.tokenizer_vocab_size("bpe"))  # fmt: skip
    synthetic.write_tokenizer(synthetic.write_model(bpe, cfg, synthetic.model_tensors(cfg, seed=1)), "bpe")
    args = {**{k: str(v) for k, v in models.items()}, "target": str(bpe),
            "options": {**OPTIONS, "kd": "shared", "init": "truncate"}}  # fmt: skip
    heldout = {}
    for devices in (1, 8):
        env = {**os.environ, "XLA_FLAGS": xla_flags(f"--xla_force_host_platform_device_count={devices}"),
               "JAX_PLATFORMS": "cpu"}  # fmt: skip
        run = {**args, "output": str(tmp_path / f"out{devices}")}
        proc = subprocess.run([sys.executable, "-c", _SHARED_RUN, json.dumps(run)], check=True, env=env, cwd=ROOT,
                              timeout=600, capture_output=True, text=True)  # fmt: skip
        count, heldout[devices] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert count == devices
    reference = load_file(str(tmp_path / "out1" / "adapter_model.safetensors"))
    _assert_same_adapter(tmp_path / "out8", reference)
    assert heldout[8]["before"] == pytest.approx(heldout[1]["before"], rel=1e-5)
    assert heldout[1]["shared_kl_before"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(command: list[list[str]], tmp_path: Path, name: str) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # one CPU device per process (conftest's XLA_FLAGS kept)
    # Logs go to files: a full stderr pipe would block one process inside a collective.
    logs = [(tmp_path / f"{name}{i}.log").open("w") for i in range(2)]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
             for c, log in zip(command, logs, strict=True)]  # fmt: skip
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], [(tmp_path / f"{name}{i}.log").read_text()[-3000:] for i in range(2)]


@pytest.mark.slow
def test_two_distributed_processes_distil_the_same_adapter_as_one(models, one_device, tmp_path) -> None:
    """Interrupted after the step-4 checkpoint (API, both processes), then resumed by the command
    with `--distributed`: the result equals one process's uninterrupted run; process 0 alone writes."""
    port = _free_port()
    args = [_args(models, tmp_path, process_id=i, coordinator=f"127.0.0.1:{port}", resume=False) for i in range(2)]
    args[1]["seen"] = str(tmp_path / "seen1.json")
    _two_processes([[sys.executable, "-c", _RESUMED_RUN, json.dumps(a)] for a in args], tmp_path, "first")
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "cache" / "distill").glob("*/step_4")), "the 2-process checkpoint was saved"
    port = _free_port()
    flags = [f"--source_model={models['source']}", f"--target_model={models['target']}",
             f"--adapter={models['adapter']}", f"--output={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
             *(f"--{k}={v}" for k, v in OPTIONS.items()),
             "--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]  # fmt: skip
    command = [sys.executable, "-m", "crosslora_jax.distill", *flags]
    _two_processes([[*command, f"--process_id={i}"] for i in range(2)], tmp_path, "resume")
    _assert_same_adapter(tmp_path / "out", one_device)
    report = json.loads((tmp_path / "out" / "crosslora_report.json").read_text())
    assert report["distill"]["resumed_from_step"] == 4 and len(report["devices"]) == 2
    assert "distill: full" in (tmp_path / "resume0.log").read_text()  # process 0 prints the summary
    assert "distill:" not in (tmp_path / "resume1.log").read_text()
    assert not list(tmp_path.glob(".out.partial-*")) and not list((tmp_path / "cache" / "distill").iterdir())


def _training_setup(models: dict[str, Path], dtype: object) -> tuple[Loss, object, Frozen, object]:
    """A `lora` student on the tiny pair with the frozen base weights in `dtype`, and fixed data."""
    src_cfg, tgt_cfg = read_model_config(models["source"]), read_model_config(models["target"])
    adapter = read_adapter(models["adapter"], src_cfg)
    (result,) = run_transfer(src_cfg, tgt_cfg, [adapter], TransferOptions())
    student = build_student("lora", False, adapter, tgt_cfg, result.written, result.factors,
                            result.layer_map.target_to_source, None, seed=0)  # fmt: skip
    spec_s, params_s = load_model(models["source"], dtype=dtype)
    spec_t, params_t = load_model(models["target"], dtype=dtype)
    params_s, params_t = jax.tree.map(jnp.asarray, (params_s, params_t))
    frozen = Frozen(params_t, params_s, source_lora(adapter, src_cfg), student.fixed)
    tokens = np.random.default_rng(3).integers(0, 256, (16, 12)).astype(np.int32)
    return Loss("full", "lora", 0.0, spec_t, spec_s, remat=True), student, frozen, as_batch(tokens)


def test_bfloat16_frozen_weights_train_float32_adapters_to_the_float32_loss(models, monkeypatch) -> None:
    runs = {}
    for name, dtype in (("f32", np.float32), ("bf16", ml_dtypes.bfloat16)):
        obj, student, frozen, data = _training_setup(models, dtype)
        for params in (frozen.target, frozen.source):  # matrices narrow, vectors (norms) float32
            per_layer = [x for x in jax.tree.leaves(params["layers"]) if x.ndim >= 3]
            top = [x for k, x in params.items() if k != "layers" and x.ndim >= 2]
            assert {x.dtype for x in per_layer + top} == {np.dtype(dtype)}
            norms = [x for k, x in params["layers"].items() if "norm" in k] + [params["norm"]]
            assert {x.dtype for x in norms} == {np.dtype(np.float32)}
        opt = optimizer(6, 1e-2, 2, 0.0, 1.0)
        steps: list = []
        real_step = _train.train_step

        def spy(*args, steps=steps, real_step=real_step):
            out = real_step(*args)
            steps.append(jax.tree.map(lambda leaf: leaf.dtype, (out[0], out[1])))
            return out

        monkeypatch.setattr(_train, "train_step", spy)
        runs[name] = train(obj, student, frozen, data, None, steps=6, batch_size=8, opt=opt, seed=0, log_every=1,
                           progress=Progress())  # fmt: skip
        assert all(x == np.float32 for x in jax.tree.leaves(steps) if jnp.issubdtype(x, jnp.floating)), steps[-1]
    f32 = np.asarray([loss for _, loss in runs["f32"].losses])
    bf16 = np.asarray([loss for _, loss in runs["bf16"].losses])
    assert f32.min() > 0.01, f32  # a KL well above round-off, so the comparison means something
    # Each bfloat16 matmul rounds its input (relative 2^-8 = eps/2) and the weights are rounded
    # once: the logits, hence the KL between two models' log-probabilities, move by a few of those
    # (measured: 4e-4 relative at the start). Later losses also carry the trajectories' drift
    # (gradients rounded too; measured: 1.2 % after 6 steps).
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    np.testing.assert_allclose(bf16[0], f32[0], rtol=eps)
    np.testing.assert_allclose(bf16, f32, rtol=8 * eps)
    assert not np.array_equal(bf16, f32), "the bfloat16 run took the float32 path"
    for leaf in jax.tree.leaves(runs["bf16"].trainable):
        assert leaf.dtype == np.float32
