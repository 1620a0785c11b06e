"""The tiny stand-ins for the model folders README and docs name, written once per session.

Snippets in README.md and docs/ name `Qwen2.5-1.5B/` (source), `Llama-3.2-3B/` (target, one layer
deeper, so the unequal-depth case is what runs), `my_lora/` and `my_other_lora/` (LoRAs of the
source), and the task
files `my_task.jsonl` and `my_text.txt`. `write_tiny_workspace` writes tiny models under those
names, so a snippet runs as written from that folder: only what the paths hold differs.
"""

from __future__ import annotations

import json
from pathlib import Path

from crosslora_jax import synthetic

SOURCE, TARGET, ADAPTER = "Qwen2.5-1.5B", "Llama-3.2-3B", "my_lora"
SOURCE_CFG = synthetic.model_config("qwen2", hidden=32, intermediate=48, heads=4, kv_heads=2, layers=2)
TARGET_CFG = synthetic.model_config("llama", hidden=48, intermediate=64, heads=4, kv_heads=2, layers=3)
ROLES = ("q", "v")  # PEFT's default target modules for llama-style models


def write_tiny_workspace(root: Path) -> Path:
    """Source and target models with byte tokenizers, two LoRAs of the source, two task files."""
    root.mkdir(parents=True, exist_ok=True)
    src = synthetic.write_model(root / SOURCE, SOURCE_CFG, synthetic.model_tensors(SOURCE_CFG, seed=0))
    tgt = synthetic.write_model(root / TARGET, TARGET_CFG, synthetic.model_tensors(TARGET_CFG, seed=1))
    for folder in (src, tgt):
        synthetic.write_tokenizer(folder, "bytes")
    synthetic.write_adapter(root / ADAPTER, SOURCE_CFG, seed=2, roles=ROLES, rank=4, alpha=8)
    synthetic.write_adapter(root / "my_other_lora", SOURCE_CFG, seed=3, roles=("q", "v"), rank=2, alpha=4)
    questions = [
        {"question": "2 + 2 =", "choices": [" 4", " 5", " 22"], "answer": 0},
        {"question": "The sky is", "choices": [" blue", " loud"], "answer": 0},
    ]
    (root / "my_task.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "my_text.txt").write_text("def add(a, b):\n    return a + b\n" * 4)
    return root
