"""`python -m crosslora_jax.evaluate` end to end on a tiny model with a tokenizer built here."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from crosslora_jax import synthetic
from crosslora_jax.eval import load_model, load_tokenizer, read_task, score_sequences

tokenizers = pytest.importorskip("tokenizers")

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees.",
    "The sun rises in the east and sets in the west.",
    "Plants need light, water and air to grow.",
    "A triangle has three sides; a square has four.",
]
_QUESTIONS = [
    {"question": "Where does the sun rise?", "choices": ["in the east", "in the west", "under the sea"], "answer": 0},
    {"question": "How many sides has a triangle?", "choices": ["four", "three"], "answer": "three"},
    {"question": "What do plants need?", "choices": ["light", "darkness only", "nothing", "salt"], "answer": "A"},
]


def _tokenizer(folder):
    """A byte-level BPE with a <bos> the post-processor prepends, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_SENTENCES, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    tok.save(str(folder / "tokenizer.json"))
    return tok.get_vocab_size()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    model = root / "model"
    model.mkdir()
    vocab = _tokenizer(model)
    config = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2, vocab=vocab)
    config["max_position_embeddings"] = 40  # forces truncation of contexts and several text windows
    synthetic.write_model(model, config, synthetic.model_tensors(config, seed=0, spectrum=synthetic.Spectrum(scale=3)))
    synthetic.write_adapter(root / "adapter", config, seed=1, roles=("q", "v", "down"), rank=4)
    (root / "qa.jsonl").write_text("\n".join(json.dumps(q) for q in _QUESTIONS) + "\n")
    (root / "text.txt").write_text(" ".join(_SENTENCES * 3))
    return root


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "crosslora_jax.evaluate", *args], capture_output=True, text=True, timeout=300
    )


def test_multiple_choice_end_to_end_is_deterministic(workdir):
    runs = []
    for n in range(2):
        out = workdir / f"mc{n}.json"
        proc = _cli(
            f"--model={workdir / 'model'}",
            f"--adapter={workdir / 'adapter'}",
            f"--task={workdir / 'qa.jsonl'}",
            "--batch_size=3",
            f"--output={out}",
        )
        assert proc.returncode == 0, proc.stderr
        assert "acc " in proc.stdout and "±" in proc.stdout
        assert "evaluating [" in proc.stderr
        runs.append(json.loads(out.read_text()))
    assert runs[0] == runs[1]
    result = runs[0]
    assert result["questions"] == 3 and 0 <= result["acc"] <= 1
    assert result["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)
    p = result["acc"]
    assert result["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 2), abs=1e-12)


def test_text_end_to_end(workdir):
    out = workdir / "text.json"
    proc = _cli(f"--model={workdir / 'model'}", f"--task={workdir / 'text.txt'}", f"--output={out}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    ids = load_tokenizer(workdir / "model").encode((workdir / "text.txt").read_text()).ids
    assert result["tokens"] == len(ids) - 1
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert 0 < result["loss"] < 2 * math.log(result["tokens"] + 1000)


def test_scores_match_transformers_across_batches_and_padding(workdir):
    """Batched, bucketed, padded scoring equals transformers' per-sequence log-likelihoods."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spec, params = load_model(workdir / "model", workdir / "adapter")
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(0, spec.vocab, n)) for n in (5, 17, 3, 33, 9)]
    starts = [1, 4, 2, 30, 8]
    sums, _ = score_sequences(spec, params, sequences, starts, batch_size=2)
    peft = pytest.importorskip("peft")
    base = transformers.AutoModelForCausalLM.from_pretrained(workdir / "model").float()
    model = peft.PeftModel.from_pretrained(base, workdir / "adapter").eval()
    for seq, start, ours in zip(sequences, starts, sums, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].double(), -1)
        theirs = sum(float(logp[i - 1, seq[i]]) for i in range(start, len(seq)))
        assert ours == pytest.approx(theirs, rel=1e-4)


def test_answer_forms(workdir):
    task = read_task(workdir / "qa.jsonl")
    assert [q.answer for q in task.questions] == [0, 1, 0]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_tokenizer", "tokenizer.json: file not found"),
        ("bad_jsonl", "qa_bad.jsonl:2: field 'answer'"),
        ("no_task", "missing.txt: file not found"),
    ],
)
def test_errors_are_one_line_exit_2(workdir, tmp_path, setup, message):
    model, task = workdir / "model", workdir / "qa.jsonl"
    if setup == "no_tokenizer":
        model = tmp_path / "model"
        model.mkdir()
        for name in ("config.json", "model.safetensors"):
            (model / name).write_bytes((workdir / "model" / name).read_bytes())
    elif setup == "bad_jsonl":
        task = tmp_path / "qa_bad.jsonl"
        task.write_text(json.dumps(_QUESTIONS[0]) + "\n" + json.dumps({**_QUESTIONS[1], "answer": 7}) + "\n")
    else:
        task = tmp_path / "missing.txt"
    proc = _cli(f"--model={model}", f"--task={task}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
