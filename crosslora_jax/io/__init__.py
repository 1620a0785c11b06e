"""File formats: safetensors checkpoints, HF configs, PEFT adapters, tokenizers, LoRA stacks. No math."""

from crosslora_jax.io._json import read_json_object

__all__ = ["read_json_object"]
