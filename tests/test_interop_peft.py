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

from safetensors.numpy import load_file, save_file  # noqa: E402

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
    "phi3": transformers.Phi3Config,
}
# Config fields some architectures need at these sizes (phi3's default token ids are 32000).
EXTRA_CONFIG = {"phi3": dict(pad_token_id=0, eos_token_id=2)}
PHI3_PROJ = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
# phi3's fused modules -> the llama modules of their roles, in row order
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip


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
        **EXTRA_CONFIG.get(model_type, {}),
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
    if target == "phi3":
        ours = check_fused_target_against_twin(models[source], models[target], adapter, out, tmp_path)
        assert len(ours) == 4 * 4  # qkv_proj, o_proj, gate_up_proj, down_proj
        return
    ours = check_loads_and_matches(models[target], out)
    # 4 target layers from 3 source layers (linear map), all seven projections.
    assert len(ours) == 4 * 7


def _phi3_blocks(config: dict) -> dict[str, list[int]]:
    """Row counts of each fused module's roles, in row order, from the config's own fields."""
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    return {"self_attn.qkv_proj": [q, kv, kv], "mlp.gate_up_proj": [config["intermediate_size"]] * 2}


def unfuse_model(phi3_dir: Path, folder: Path) -> Path:
    """The same weights as a llama checkpoint: qkv_proj and gate_up_proj split into their roles."""
    config = json.loads((phi3_dir / "config.json").read_text())
    blocks = _phi3_blocks(config)
    tensors = {}
    for name, value in load_file(str(phi3_dir / "model.safetensors")).items():
        fused = next((f for f in FUSED if name.endswith(f"{f}.weight")), None)
        if fused is None:
            tensors[name] = value
            continue
        parts = np.split(value, np.cumsum(blocks[fused])[:-1])
        for module, part in zip(FUSED[fused], parts, strict=True):
            tensors[name.replace(fused, module)] = np.ascontiguousarray(part)
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({**config, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    return folder


def unfuse_adapter(adapter_dir: Path, phi3_dir: Path, folder: Path) -> Path:
    """A phi3 PEFT adapter as the llama twin's: each fused module's lora_A shared by its roles,
    lora_B split by their rows; rank and alpha patterns keyed by the roles' modules."""
    blocks = _phi3_blocks(json.loads((phi3_dir / "config.json").read_text()))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = {}
    for name, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        fused = next((f for f in FUSED if f".{f}." in name), None)
        if fused is None:
            tensors[name] = value
        elif ".lora_A." in name:
            tensors.update({name.replace(fused, module): value for module in FUSED[fused]})
        else:
            parts = np.split(value, np.cumsum(blocks[fused])[:-1])
            tensors.update(
                {name.replace(fused, m): np.ascontiguousarray(p) for m, p in zip(FUSED[fused], parts, strict=True)}
            )
    leaf = {f.rsplit(".", 1)[1]: [m.rsplit(".", 1)[1] for m in ms] for f, ms in FUSED.items()}
    config["target_modules"] = sorted(t for m in config["target_modules"] for t in leaf.get(m, [m]))
    for field in ("rank_pattern", "alpha_pattern"):
        config[field] = {t: v for key, v in (config.get(field) or {}).items() for t in leaf.get(key, [key])}
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def check_fused_target_against_twin(source: Path, phi3_dir: Path, adapter: Path, out: Path, tmp_path: Path):
    """PEFT loads our phi3 adapter, and the deltas it merges into qkv_proj / gate_up_proj are, row
    block by row block, those of the same transfer onto the llama twin of the target (zero rows
    for roles not written): fusing, per-role scales and the written patterns all checked by PEFT."""
    peft_d, in_model, in_file = peft_deltas(phi3_dir, out)
    assert in_model == in_file, f"missing {in_file - in_model}, unexpected {in_model - in_file}"
    twin_out = tmp_path / "twin_out"
    transfer(source, unfuse_model(phi3_dir, tmp_path / "twin"), [adapter], twin_out, OPTIONS)
    twin = our_deltas(twin_out)
    assert twin, "nothing was written"
    blocks = _phi3_blocks(json.loads((phi3_dir / "config.json").read_text()))
    written = {k.removeprefix("base_model.model.").rsplit(".", 2)[0] for k in in_file}
    for path, delta in peft_d.items():
        fused = next((f for f in FUSED if path.endswith(f)), None)
        roles = [path.replace(fused, m) for m in FUSED[fused]] if fused else [path]
        if not any(r in twin for r in roles):
            assert path not in written and not delta.any(), f"{path} changed but we wrote no adapter for it"
            continue
        sizes = blocks[fused] if fused else [delta.shape[0]]
        want = np.concatenate([twin.get(r, np.zeros((m, delta.shape[1]))) for r, m in zip(roles, sizes, strict=True)])
        scale = np.abs(want).max()
        np.testing.assert_allclose(delta, want, atol=1e-4 * scale, rtol=1e-4, err_msg=path)
    return written


def test_adapter_trained_on_phi3_moves_to_another_architecture(models, tmp_path) -> None:
    """phi3 as the source: its fused modules' LoRAs are split by rows (lora_A shared) and its
    weights' roles read as row blocks: the result equals the same transfer from the unfused
    llama twin of the model and adapter, and PEFT loads it."""
    adapter = make_adapter(tmp_path / "lora", models["phi3"], seed=7, target_modules=PHI3_PROJ,
                           rank_pattern={"gate_up_proj": 2}, alpha_pattern={"qkv_proj": 3.0})  # fmt: skip
    out = tmp_path / "out"
    (report,) = transfer(models["phi3"], models["llama"], [adapter], out, OPTIONS)
    ours = check_loads_and_matches(models["llama"], out)
    assert len(ours) == 4 * 7
    assert {m.figures.source_module.rsplit(".", 1)[1] for m in report.modules if m.figures} == set(PHI3_PROJ)
    twin_dir = unfuse_model(models["phi3"], tmp_path / "twin")
    twin_adapter = unfuse_adapter(adapter, models["phi3"], tmp_path / "twin_lora")
    transfer(twin_dir, models["llama"], [twin_adapter], tmp_path / "twin_out", OPTIONS)
    twin = our_deltas(tmp_path / "twin_out")
    assert set(twin) == set(ours)
    for path, delta in ours.items():
        np.testing.assert_allclose(delta, twin[path], rtol=1e-5, atol=1e-5 * np.abs(twin[path]).max(), err_msg=path)


@pytest.mark.parametrize("variant", ["rank_and_alpha_patterns", "rslora", "regex_target_modules"])
def test_adapter_moved_onto_phi3_keeps_each_roles_scale(models, tmp_path, variant) -> None:
    """Per-role ranks and alphas (patterns, rslora) and roles missing from a fused module
    (q and v without k; up without gate) survive fusing: PEFT merges the twin's deltas."""
    adapter = make_adapter(tmp_path / "lora", models["src_llama"], seed=8, **VARIANTS[variant])
    out = tmp_path / "out"
    transfer(models["src_llama"], models["phi3"], [adapter], out, OPTIONS)
    written = check_fused_target_against_twin(models["src_llama"], models["phi3"], adapter, out, tmp_path)
    config = json.loads((out / "adapter_config.json").read_text())
    if variant == "rank_and_alpha_patterns":  # q 4 (2 at layer 1), k 4, v 4: fused ranks 12 and 10
        assert {v for k, v in config["rank_pattern"].items() if k.endswith("qkv_proj")} == {12, 10}
    if variant == "regex_target_modules":
        assert {p.rsplit(".", 1)[1] for p in written} == {"qkv_proj", "gate_up_proj"}


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
