"""File formats: safetensors checkpoints, HF configs, PEFT adapters, reports. No math."""
