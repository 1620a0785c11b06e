"""Teacher sampling's progress: one line per batch with an ETA, counting real sequences (the last
batch's padding is not counted), under the label the caller gives (distill's says why its count
is --prompts + --heldout)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import jax
import numpy as np

from crosslora_jax import Progress, synthetic
from crosslora_jax.distillation._teacher import sample_sequences
from crosslora_jax.eval import load_model


def test_sampling_shows_each_batch_with_an_eta(tmp_path: Path) -> None:
    cfg = synthetic.model_config("llama", hidden=16, intermediate=24, heads=2, kv_heads=1, layers=1, vocab=256)
    folder = synthetic.write_model(tmp_path / "m", cfg, synthetic.model_tensors(cfg, seed=0))
    spec, params = load_model(folder)
    out = io.StringIO()
    tokens = sample_sequences(spec, params, None, np.full((5, 1), 65, np.int32), gen_len=3, temperature=1.0,
                              top_p=1.0, key=jax.random.key(0), batch_size=2, progress=Progress(out),
                              label="teacher (4 + 1 held out)")  # fmt: skip
    assert tokens.shape == (5, 4)
    lines = out.getvalue().splitlines()
    assert [line.split(";")[0] for line in lines] == [
        "[1/3  33%] teacher (4 + 1 held out): 2/5 sequences sampled",
        "[2/3  67%] teacher (4 + 1 held out): 4/5 sequences sampled",
        "[3/3 100%] teacher (4 + 1 held out): 5/5 sequences sampled",
    ]
    assert all(re.search(r"; elapsed \d+s, ETA \d+s$", line) for line in lines), lines
