"""Real clients: transformers + PEFT make the source adapter and load what we write for the target.

For every supported target architecture: tiny random transformers models from configs (no hub),
a real adapter from `get_peft_model`, our transfer, then `PeftModel.from_pretrained` on the
target: every adapter tensor loads (no missing or unexpected keys) and the delta PEFT merges
equals γ·B_t·A_t computed from what we wrote.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from safetensors.numpy import load_file  # noqa: E402

from crosslora_jax import SvdSettings, TransferOptions, transfer  # noqa: E402

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[1]
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "gemma": transformers.GemmaConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3_text": transformers.Gemma3TextConfig,
}


def make_model(folder: Path, model_type: str, *, hidden: int, heads: int, kv: int, layers: int, seed: int) -> Path:
    config = CONFIGS[model_type](
        hidden_size=hidden,
        intermediate_size=2 * hidden + 16,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        num_hidden_layers=layers,
        vocab_size=64,
        head_dim=hidden // heads,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    return folder


def make_adapter(folder: Path, model_dir: Path, seed: int, dtype=None, **lora_kwargs) -> Path:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ALL_PROJ, **lora_kwargs})
    )
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:  # a fresh LoRA has B = 0; a trained one does not
                param.normal_(0, 0.1)
    if dtype is not None:
        lora = lora.to(dtype)
    lora.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interop")
    out = {
        "src_llama": make_model(root / "src_llama", "llama", hidden=32, heads=4, kv=2, layers=3, seed=0),
        "src_qwen2": make_model(root / "src_qwen2", "qwen2", hidden=32, heads=4, kv=4, layers=3, seed=1),
    }
    # Targets: another size (wider, GQA with one kv head, one layer deeper) for every architecture.
    for n, arch in enumerate(CONFIGS):
        out[arch] = make_model(root / f"tgt_{arch}", arch, hidden=48, heads=4, kv=1, layers=4, seed=10 + n)
    return out


def peft_deltas(target_dir: Path, adapter_dir: Path) -> tuple[dict[str, np.ndarray], set[str], set[str]]:
    """Per module path, the delta PEFT merges; and the adapter keys in the model vs the file."""
    base = transformers.AutoModelForCausalLM.from_pretrained(target_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = peft.PeftModel.from_pretrained(base, adapter_dir)
    in_model = {k.replace(".default", "") for k in model.state_dict() if "lora_" in k}
    in_file = set(load_file(str(adapter_dir / "adapter_model.safetensors")))
    merged = model.merge_and_unload().state_dict()
    deltas = {
        k[: -len(".weight")]: (merged[k] - before[k]).double().numpy() for k in merged if k.endswith("proj.weight")
    }
    return deltas, in_model, in_file


def our_deltas(adapter_dir: Path) -> dict[str, np.ndarray]:
    """γ·B·A from the factors we wrote, γ from the report's source-module rank and alpha (not from
    the adapter_config we wrote, so a wrong rank_pattern/alpha_pattern there shows up)."""
    report = json.loads((adapter_dir / "crosslora_report.json").read_text())
    rslora = json.loads((adapter_dir / "adapter_config.json").read_text())["use_rslora"]
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for m in report["modules"]:
        if m["status"] != "transferred":
            continue
        key = f"base_model.model.{m['module']}"
        a = tensors[f"{key}.lora_A.weight"].astype(np.float64)
        b = tensors[f"{key}.lora_B.weight"].astype(np.float64)
        assert a.shape[0] == m["rank"]
        out[m["module"]] = (m["alpha"] / (math.sqrt(m["rank"]) if rslora else m["rank"])) * (b @ a)
    assert len(out) * 2 == len(tensors)
    return out


def check_loads_and_matches(target_dir: Path, out: Path, *, rtol: float = 1e-5) -> dict[str, np.ndarray]:
    peft_d, in_model, in_file = peft_deltas(target_dir, out)
    assert in_model == in_file, f"missing {in_file - in_model}, unexpected {in_model - in_file}"
    ours = our_deltas(out)
    assert ours, "nothing was written"
    for path, delta in peft_d.items():
        if path in ours:
            scale = max(np.abs(ours[path]).max(), 1e-12)
            np.testing.assert_allclose(delta, ours[path], atol=rtol * scale * 10, rtol=rtol, err_msg=path)
        else:
            assert not delta.any(), f"{path} changed but we wrote no adapter for it"
    return ours


OPTIONS = TransferOptions(svd=SvdSettings(rank=16))


@pytest.mark.parametrize("target", list(CONFIGS))
def test_every_target_architecture_loads_in_peft(models, tmp_path, target) -> None:
    source = "src_qwen2" if target == "llama" else "src_llama"  # always another architecture
    adapter = make_adapter(tmp_path / "lora", models[source], seed=3)
    out = tmp_path / "out"
    transfer(models[source], models[target], [adapter], out, OPTIONS)
    ours = check_loads_and_matches(models[target], out)
    # 4 target layers from 3 source layers (linear map), all seven projections.
    assert len(ours) == 4 * 7


def test_adapter_trained_on_gemma3_moves_to_another_architecture(models, tmp_path) -> None:
    """gemma3_text as the source: its adapter is read, its weights' subspaces computed."""
    adapter = make_adapter(tmp_path / "lora", models["gemma3_text"], seed=7)
    out = tmp_path / "out"
    transfer(models["gemma3_text"], models["llama"], [adapter], out, OPTIONS)
    ours = check_loads_and_matches(models["llama"], out)
    assert len(ours) == 4 * 7


@pytest.mark.parametrize("method", ["cross_lora", "lora_x", "truncate"])
def test_every_method_through_the_command_line(models, tmp_path, method) -> None:
    adapter = make_adapter(tmp_path / "lora", models["src_llama"], seed=4, target_modules=["q_proj", "v_proj"])
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "crosslora_jax.transfer",
            f"--source_model={models['src_llama']}",
            f"--target_model={models['gemma2']}",
            f"--adapter={adapter}",
            f"--output={out}",
            f"--method={method}",
            "--svd_rank=16",
            "--layer_map=index",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    ours = check_loads_and_matches(models["gemma2"], out)
    assert len(ours) == 3 * 2  # index map: target layer 3 has no source layer


VARIANTS = {
    "rank_and_alpha_patterns": dict(
        rank_pattern={"model.layers.1.self_attn.q_proj": 2, "down_proj": 6}, alpha_pattern={"v_proj": 3.0}
    ),
    "rslora": dict(use_rslora=True, lora_alpha=5),
    "layers_to_transform": dict(layers_to_transform=[0, 2], layers_pattern="layers"),
    "regex_target_modules": dict(target_modules=r".*\.(self_attn\.(q|v)_proj|mlp\.up_proj)"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_adapter_config_variants_survive_the_trip(models, tmp_path, variant) -> None:
    adapter = make_adapter(tmp_path / "lora", models["src_llama"], seed=5, **VARIANTS[variant])
    out = tmp_path / "out"
    transfer(models["src_llama"], models["qwen3"], [adapter], out, OPTIONS)
    ours = check_loads_and_matches(models["qwen3"], out)
    config = json.loads((out / "adapter_config.json").read_text())
    ranks = {path: d.shape for path, d in ours.items()}
    assert ranks
    if variant == "rank_and_alpha_patterns":
        assert any(v == 2 for v in config["rank_pattern"].values())
        assert any(v == 6 for v in config["rank_pattern"].values())
        assert all(v == 3.0 for v in config["alpha_pattern"].values()) and config["alpha_pattern"]
    if variant == "rslora":
        assert config["use_rslora"] is True
    if variant == "layers_to_transform":  # linear map 3→4 layers: target j ← source [0, 1, 1, 2]
        assert {int(p.split(".")[2]) for p in ours} == {0, 3}
        assert config["layers_to_transform"] == [0, 3]
    if variant == "regex_target_modules":
        assert {p.rsplit(".", 1)[-1] for p in ours} == {"q_proj", "v_proj", "up_proj"}


def test_bf16_adapter_is_written_in_bf16_and_loads(models, tmp_path) -> None:
    adapter = make_adapter(tmp_path / "lora", models["src_llama"], seed=6, dtype=torch.bfloat16)
    out = tmp_path / "out"
    transfer(models["src_llama"], models["mistral"], [adapter], out, OPTIONS)
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 — not a dict
    check_loads_and_matches(models["mistral"], out, rtol=1e-2)
