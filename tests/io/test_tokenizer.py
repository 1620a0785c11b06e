"""io.tokenizer: fixtures round-trip, vocabulary comparison against a pure-Python re-derivation,
re-tokenisation against transformers' tokenizer, prompts files, and every bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from _profiles import examples
from hypothesis import HealthCheck, given, settings

from crosslora_jax import synthetic
from crosslora_jax._errors import ConfigError, CrossLoraError, PromptsError, TokenizerError
from crosslora_jax.io.tokenizer import (
    GENERIC_STARTS,
    NO_BYTE,
    first_bytes,
    generic_starts,
    read_prompts_file,
    read_tokenizer,
    retokenize,
    retokenize_aligned,
    same_vocabulary,
    shared_vocabulary,
)

FUZZ = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROUND_TRIP = settings(max_examples=examples(80), deadline=None)
TEXTS = ["the self import def x\n  y", "héllo wörld — ∑ 日本語 🙂", "", " ", "def f(a, b):\n    return a = b\n"]


def _llama_like(folder: Path) -> Path:
    """A SentencePiece-style tokenizer (metaspace "▁", byte fallback <0xNN>) as transformers writes Llama 2's."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", "▁t", "he", "▁the", "▁a", "in", "▁in", "se", "lf", "self", "▁self", "▁é", "é"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "n"), ("▁", "in"), ("s", "e"), ("l", "f"),
              ("se", "lf"), ("▁", "self"), ("▁", "é")]  # fmt: skip
    for c in "theaislfné":
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ("<unk>", "<s>", "</s>")])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    out = {kind: synthetic.write_tokenizer(root / kind, kind) for kind in ("bytes", "bpe")}
    out["bytes2"] = synthetic.write_tokenizer(root / "bytes2", "bytes")
    out["llama"] = _llama_like(root / "llama")
    return out


@pytest.fixture(scope="module")
def toks(folders):
    return {k: read_tokenizer(v) for k, v in folders.items()}


# ---- fixtures and round trips ------------------------------------------------------------------


@functools.cache
def _fixture(kind: str):
    """A fixture tokenizer for hypothesis tests (they take no function-scoped pytest fixtures)."""
    with tempfile.TemporaryDirectory() as d:
        return read_tokenizer(synthetic.write_tokenizer(Path(d), kind))


@ROUND_TRIP
@given(text=st.text(max_size=40))
def test_byte_fixture_is_token_id_equals_byte(text) -> None:
    tok = _fixture("bytes")
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


@ROUND_TRIP
@given(text=st.text(max_size=40))
def test_bpe_fixture_round_trips(text) -> None:
    tok = _fixture("bpe")
    ids = tok.encode(text)
    assert all(3 <= i < tok.vocab_size for i in ids)  # text never becomes a special token
    assert len(ids) <= len(text.encode("utf-8"))
    assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", ["bytes", "bpe", "llama"])
def test_ids_and_specials_agree_with_transformers(folders, toks, kind) -> None:
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(folders[kind])
    tok = toks[kind]
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(tok.encode(text)) == ref.decode(tok.encode(text), skip_special_tokens=True)
    assert tok.bos_id == ref.bos_token_id
    assert tok.eos_ids == (() if ref.eos_token_id is None else (ref.eos_token_id,))
    assert tok.vocab_size == len(ref)


def test_fixture_fields(folders, toks) -> None:
    bpe, byte = toks["bpe"], toks["bytes"]
    assert (bpe.bos_id, bpe.eos_ids, bpe.special_ids) == (0, (1,), frozenset({0, 1, 2}))
    assert bpe.vocab_size == synthetic.tokenizer_vocab_size("bpe")
    assert "messages" in bpe.chat_template
    assert (byte.bos_id, byte.eos_ids, byte.chat_template, byte.vocab_size) == (None, (), None, 256)
    assert bpe.path == folders["bpe"] / "tokenizer.json"


def test_chat_template_sources_and_config_ids(folders, tmp_path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(folders["bpe"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"vocab_size": 300, "bos_token_id": 0, "eos_token_id": [5, 1]}))
    tok = read_tokenizer(folder)
    assert tok.chat_template == "D"
    assert tok.eos_ids == (1, 5)  # tokenizer_config's first, then config.json's, no repeats
    (folder / "chat_template.jinja").write_text("J {{ messages }}")
    assert read_tokenizer(folder).chat_template == "J {{ messages }}"


# ---- vocabulary comparison ---------------------------------------------------------------------


def test_same_vocabulary(folders, toks, tmp_path) -> None:
    assert same_vocabulary(toks["bytes"], toks["bytes2"])
    assert same_vocabulary(toks["bpe"], toks["bpe"])
    assert not same_vocabulary(toks["bytes"], toks["bpe"])
    assert not same_vocabulary(toks["bpe"], toks["llama"])
    raw = json.loads((folders["bytes"] / "tokenizer.json").read_text())
    # the same token→id map without the byte-level decoder: the ids now mean other bytes
    (tmp_path / "nodec").mkdir()
    (tmp_path / "nodec" / "tokenizer.json").write_text(json.dumps({**raw, "decoder": None}))
    assert not same_vocabulary(toks["bytes"], read_tokenizer(tmp_path / "nodec"))
    # one token renamed
    vocab = raw["model"]["vocab"]
    renamed = {("zz" if i == 65 else t): i for t, i in vocab.items()}
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "tokenizer.json").write_text(
        json.dumps({**raw, "model": {**raw["model"], "vocab": renamed}})
    )
    assert not same_vocabulary(toks["bytes"], read_tokenizer(tmp_path / "renamed"))


def _gpt2_byte_of_char() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def _reference_surfaces(folder: Path) -> dict[int, tuple[bool, bytes]]:
    """id → (special, bytes), re-derived from the JSON: byte-level chars through transformers'
    GPT-2 table, or "▁" → space and <0xNN> → byte NN; added tokens by content."""
    raw = json.loads((folder / "tokenizer.json").read_text())
    decoder = json.dumps(raw["decoder"])
    out = {}
    for token, i in raw["model"]["vocab"].items():
        if '"ByteLevel"' in decoder:
            table = _gpt2_byte_of_char()
            out[i] = (False, bytes(table[c] for c in token))
        elif token.startswith("<0x") and len(token) == 6:
            out[i] = (False, bytes([int(token[3:5], 16)]))
        else:
            out[i] = (False, token.replace("▁", " ").encode())
    for added in raw["added_tokens"]:
        out[added["id"]] = (added["special"], added["content"].encode())
    return out


@pytest.mark.parametrize(
    "pair", [("bytes", "bpe"), ("bpe", "bytes"), ("bpe", "llama"), ("llama", "bytes"), ("bpe", "bpe")]
)
def test_shared_vocabulary_matches_pure_python(folders, toks, pair) -> None:
    a, b = (_reference_surfaces(folders[k]) for k in pair)
    lowest_a, lowest_b = {}, {}
    for surfaces, lowest in ((a, lowest_a), (b, lowest_b)):
        for i in sorted(surfaces):
            lowest.setdefault(surfaces[i], i)
    expected = sorted((lowest_a[s], lowest_b[s]) for s in lowest_a.keys() & lowest_b.keys())
    ids_a, ids_b = shared_vocabulary(toks[pair[0]], toks[pair[1]])
    assert ids_a.dtype == ids_b.dtype == np.int32
    assert list(zip(ids_a.tolist(), ids_b.tolist(), strict=True)) == expected
    assert len(set(ids_a.tolist())) == len(ids_a) and len(set(ids_b.tolist())) == len(ids_b)


@pytest.mark.parametrize("kind", ["bytes", "bpe", "llama"])
def test_first_bytes_match_pure_python(folders, toks, kind) -> None:
    surfaces = _reference_surfaces(folders[kind])
    tok = toks[kind]
    got = first_bytes(tok, tok.vocab_size + 3)  # 3 ids of embedding padding: no token
    want = [NO_BYTE] * (tok.vocab_size + 3)
    for i, (special, data) in surfaces.items():
        if not special and data:
            want[i] = data[0]
    assert got.dtype == np.int32 and got.tolist() == want
    assert (got < NO_BYTE).sum() >= 256  # every byte value is some token's first byte


def test_shared_vocabulary_pairs_mean_the_same_text(toks) -> None:
    """Spot checks by meaning: byte-level "Ġthe" is SentencePiece "▁the"; "<0x41>" is "A"."""
    bpe, llama = toks["bpe"], toks["llama"]
    pairs = dict(zip(*(x.tolist() for x in shared_vocabulary(bpe, llama)), strict=True))
    assert pairs[bpe.vocab["Ġthe"]] == llama.vocab["▁the"]
    assert pairs[bpe.vocab["A"]] == llama.vocab["<0x41>"]
    assert llama.vocab["<0x20>"] < llama.vocab["▁"]  # both mean a space: the lower id is paired
    assert pairs[bpe.vocab["Ġ"]] == llama.vocab["<0x20>"]
    assert pairs[bpe.vocab["<s>"]] == llama.vocab["<s>"]  # specials by content
    assert bpe.vocab["<pad>"] not in pairs


# ---- retokenize --------------------------------------------------------------------------------


def test_retokenize_bytes_to_bpe_matches_transformers(folders, toks) -> None:
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(folders["bpe"])
    texts = ["the self import", "héllo\n  wörld", "x"]
    rows = [list(t.encode()) for t in texts]
    width = max(map(len, rows)) + 3
    ids = np.array([r + [7] * (width - len(r)) for r in rows])  # 7: junk after the end, masked out
    mask = np.array([[j < len(r) for j in range(width)] for r in rows])
    out, keep = retokenize(ids, toks["bytes"], toks["bpe"], mask=mask)
    expected = [[ref.bos_token_id, *ref.encode(t, add_special_tokens=False)] for t in texts]
    assert out.shape == (3, max(map(len, expected))) and out.dtype == np.int32
    for row, exp in enumerate(expected):
        assert out[row][keep[row]].tolist() == exp
        assert keep[row].tolist() == [j < len(exp) for j in range(out.shape[1])]
        assert not out[row][~keep[row]].any()


def test_retokenize_bpe_to_bytes_drops_specials_and_repairs_bytes(toks) -> None:
    bpe, byte = toks["bpe"], toks["bytes"]
    rows = [[0, *bpe.encode("ab"), 1, *bpe.encode(" the")], [*bpe.encode("é")[:1]]]  # a lone UTF-8 lead byte
    out, keep = retokenize(rows, bpe, byte, add_bos=True)  # bytes has no BOS: nothing prepended
    assert out[0][keep[0]].tolist() == list(b"ab the")
    assert out[1][keep[1]].tolist() == list("\ufffd".encode())
    cut, cut_keep = retokenize(rows, bpe, byte, max_len=3)
    assert cut.shape == (2, 3) and cut[0].tolist() == list(b"ab ")
    assert cut_keep[1].tolist() == [True, True, True]


def test_retokenize_without_bos(toks) -> None:
    out, keep = retokenize([list(b"the")], toks["bytes"], toks["bpe"], add_bos=False)
    assert out[0][keep[0]].tolist() == toks["bpe"].encode("the")


# ---- generic starts ----------------------------------------------------------------------------


def _reference_positions(a, b, ids_a, mask_a, ids_b, mask_b) -> list[list[int]]:
    """Positions q of b and p of a are aligned when the texts their prefixes decode to are equal;
    where several positions of one side decode to the same text (BOS, then a Metaspace "▁" that
    decodes to nothing), the last of them."""
    out = []
    for ra, ma, rb, mb in zip(ids_a, mask_a, ids_b, mask_b, strict=True):
        ra, rb = ra[ma].tolist(), rb[mb].tolist()
        prefix_a = {a.decode(ra[: p + 1]): p for p in range(len(ra) - 1)}
        prefix_b = {b.decode(rb[: q + 1]): q for q in range(len(rb) - 1)}
        row = [-1] * (ids_b.shape[1] - 1)
        for text, q in prefix_b.items():
            row[q] = prefix_a.get(text, -1)
        out.append(row)
    return out


@pytest.mark.parametrize("pair", [("bytes", "bpe"), ("bpe", "bytes"), ("bpe", "llama"), ("llama", "bpe")])
@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(
        st.text(alphabet="theaislfn xd=\n()", min_size=1, max_size=30).filter(lambda t: not t[0].isspace()),
        min_size=1,
        max_size=4,
    )
)
def test_retokenize_aligned_matches_decoded_prefixes(toks, pair, texts) -> None:
    a, b = (toks[k] for k in pair)
    rows = [a.encode(t) for t in texts]
    got = retokenize_aligned(rows, a, b)
    for tok, ids, keep in ((a, got.a_ids, got.a_mask), (b, got.b_ids, got.b_mask)):
        prefix = [tok.bos_id] if tok.bos_id is not None else []
        assert [r[m].tolist() for r, m in zip(ids, keep, strict=True)] == [prefix + tok.encode(t) for t in texts]
    assert got.a_position.dtype == np.int32 and got.a_position.shape == (len(texts), got.b_ids.shape[1] - 1)
    assert got.a_position.tolist() == _reference_positions(a, b, *got[:4])
    if a.bos_id is not None and b.bos_id is not None:  # not vacuous: at least both BOS positions meet
        assert (got.a_position >= 0).any(axis=1).all()


def test_retokenize_aligned_inside_a_character_and_when_spelling_fails(toks) -> None:
    """Byte-level tokenizations meet after each byte of "日" (3 bytes), where no prefix decodes;
    a row whose tokens do not spell its text (unknown surface) gets no aligned position."""
    byte, bpe = toks["bytes"], toks["bpe"]
    got = retokenize_aligned([list("日x".encode())], byte, bpe)
    assert got.b_ids[0].tolist() == [bpe.bos_id, *(3 + c for c in "日x".encode())]
    assert got.a_position.tolist() == [[-1, 0, 1, 2]]  # BOS: nothing read; then 1, 2, 3 bytes
    back = retokenize_aligned([bpe.encode("日x")], bpe, byte)
    assert back.a_position.tolist() == [[1, 2, 3]]  # bytes has no BOS: its first position has read 1 byte
    unknown = dataclasses.replace(bpe)
    unknown.__dict__["_surfaces"] = {**bpe._surfaces, bpe.vocab["Ġthe"]: None}
    spoiled = retokenize_aligned([byte.encode("x the"), byte.encode("xy")], byte, unknown)
    assert spoiled.a_position.tolist() == [[-1, -1], [-1, 0]]  # row 1 spells its text: it still meets


def test_generic_starts(toks) -> None:
    assert generic_starts(toks["bpe"]).tolist() == [[0]]  # BOS
    expected = list(dict.fromkeys(s.encode()[0] for s in GENERIC_STARTS))
    starts = generic_starts(toks["bytes"])
    assert starts.dtype == np.int32 and starts.tolist() == [[b] for b in expected]


# ---- bad tokenizer folders ---------------------------------------------------------------------


def _bpe_json(folders) -> dict:
    return json.loads((folders["bpe"] / "tokenizer.json").read_text())


def _spoil(kind: str, folders, folder: Path) -> None:
    raw = _bpe_json(folders)
    tj, tc = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if kind == "missing_file":
        tj.unlink()
    elif kind == "sentencepiece_only":
        tj.unlink()
        (folder / "tokenizer.model").write_bytes(b"\x0a\x03abc")
    elif kind == "bad_json":
        tj.write_text('{"model": ')
    elif kind == "not_utf8":
        tj.write_bytes(b'{"model": "\xff"}')
    elif kind == "json_list":
        tj.write_text("[1, 2]")
    elif kind == "no_model":
        tj.write_text(json.dumps({k: v for k, v in raw.items() if k != "model"}))
    elif kind == "library_refuses":
        tj.write_text(json.dumps({**raw, "model": {**raw["model"], "merges": [["Ġ", "nope"]]}}))
    elif kind == "empty_vocab":
        tj.write_text(json.dumps({**raw, "added_tokens": [], "model": {**raw["model"], "vocab": {}, "merges": []}}))
    elif kind == "added_id_mismatch":
        tj.write_text(json.dumps({**raw, "added_tokens": [{**raw["added_tokens"][0], "content": "<new>", "id": 0}]}))
    elif kind == "two_tokens_one_id":
        tj.write_text(json.dumps({**raw, "model": {**raw["model"], "vocab": {**raw["model"]["vocab"], "zz": 40}}}))
    elif kind == "id_too_large":
        tj.write_text(
            json.dumps({**raw, "model": {**raw["model"], "vocab": {**raw["model"]["vocab"], "zz": 2**32 - 1}}})
        )
    elif kind == "more_ids_than_model":
        (folder / "config.json").write_text(json.dumps(synthetic.model_config("llama", hidden=8, intermediate=16,
                                                                              heads=2, kv_heads=1, layers=1)))  # fmt: skip
    elif kind == "bos_not_in_vocab":
        tc.write_text(json.dumps({"bos_token": "<bos>"}))
    elif kind == "bos_wrong_type":
        tc.write_text(json.dumps({"bos_token": 5}))
    elif kind == "chat_template_wrong_type":
        tc.write_text(json.dumps({"chat_template": {"a": 1}}))
    elif kind == "tokenizer_config_bad_json":
        tc.write_text("{")
    elif kind == "chat_template_not_utf8":
        (folder / "chat_template.jinja").write_bytes(b"\xff\xfe")
    elif kind == "config_eos_out_of_range":
        (folder / "config.json").write_text(json.dumps({"vocab_size": 300, "eos_token_id": [1, 290]}))
    elif kind == "config_bad_json":
        (folder / "config.json").write_text("[")
    elif kind == "folder_is_file":
        shutil.rmtree(folder)
        folder.write_text("x")
    elif kind == "no_folder":
        shutil.rmtree(folder)
    else:
        raise AssertionError(kind)


BAD = {
    "missing_file": (TokenizerError, "tokenizer.json", "not found"),
    "sentencepiece_only": (TokenizerError, "tokenizer.json", "tokenizer.model"),
    "bad_json": (TokenizerError, "tokenizer.json", "malformed JSON"),
    "not_utf8": (TokenizerError, "tokenizer.json", "cannot read"),
    "json_list": (TokenizerError, "tokenizer.json", "expected a JSON object"),
    "no_model": (TokenizerError, "tokenizer.json", "'model'"),
    "library_refuses": (TokenizerError, "tokenizer.json", "not a valid tokenizer"),
    "empty_vocab": (TokenizerError, "tokenizer.json", "empty"),
    "added_id_mismatch": (TokenizerError, "tokenizer.json", "'<new>'"),
    "two_tokens_one_id": (TokenizerError, "tokenizer.json", "id 40"),
    "id_too_large": (TokenizerError, "tokenizer.json", "too large"),
    "more_ids_than_model": (TokenizerError, "tokenizer.json", "vocab_size is 256"),
    "bos_not_in_vocab": (TokenizerError, "tokenizer_config.json", "'<bos>'"),
    "bos_wrong_type": (TokenizerError, "tokenizer_config.json", "bos_token"),
    "chat_template_wrong_type": (TokenizerError, "tokenizer_config.json", "chat_template"),
    "tokenizer_config_bad_json": (TokenizerError, "tokenizer_config.json", "malformed JSON"),
    "chat_template_not_utf8": (TokenizerError, "chat_template.jinja", "cannot read"),
    "config_eos_out_of_range": (ConfigError, "config.json", "290"),
    "config_bad_json": (ConfigError, "config.json", "malformed JSON"),
    "folder_is_file": (TokenizerError, "m", "folder"),
    "no_folder": (TokenizerError, "m", "not found"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_tokenizer_folders(folders, tmp_path, kind) -> None:
    folder = tmp_path / "m"
    shutil.copytree(folders["bpe"], folder)
    _spoil(kind, folders, folder)
    error, file_name, words = BAD[kind]
    with pytest.raises(error) as info:
        read_tokenizer(folder)
    message = str(info.value)
    assert "\n" not in message
    assert Path(info.value.where).name == file_name, message
    assert words in message, message
    if error is ConfigError:
        assert not isinstance(info.value, TokenizerError)


def test_spoiled_copies_start_valid(folders, tmp_path) -> None:
    """The spoilers edit a folder that reads cleanly (else the cases above prove nothing)."""
    folder = tmp_path / "m"
    shutil.copytree(folders["bpe"], folder)
    (folder / "config.json").write_text(json.dumps({"vocab_size": 300, "eos_token_id": [1, 289]}))
    assert read_tokenizer(folder).eos_ids == (1, 289)


# ---- prompts files -----------------------------------------------------------------------------


def test_prompts_text_file(tmp_path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffThe first\r\n\n   \n  indented stays\nlast without newline".encode())
    assert read_prompts_file(path) == ("The first", "  indented stays", "last without newline")


def test_prompts_jsonl_file(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    lines = [{"prompt": "line one\nline two"}, {"text": "from text"}, {"prompt": "p wins", "text": "t"}]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    assert read_prompts_file(path) == ("line one\nline two", "from text", "p wins")


BAD_PROMPTS = {
    "missing": ("p.txt", None, "p.txt", "not found"),
    "folder": ("p.txt", "folder", "p.txt", "folder"),
    "not_utf8": ("p.txt", b"ok\nstill ok\nbad \xff byte\n", "p.txt:3", "not UTF-8"),
    "empty": ("p.txt", b"", "p.txt", "no prompts"),
    "blank_only": ("p.jsonl", b"\n  \n\r\n", "p.jsonl", "no prompts"),
    "bad_json_line": ("p.jsonl", b'{"prompt": "a"}\n{"prompt": \n', "p.jsonl:2", "malformed JSON"),
    "not_an_object": ("p.jsonl", b'{"prompt": "a"}\n\n["b"]\n', "p.jsonl:3", "JSON object"),
    "no_field": ("p.jsonl", b'{"question": "a"}\n', "p.jsonl:1", '"prompt"'),
    "empty_prompt": ("p.jsonl", b'{"prompt": ""}\n', "p.jsonl:1", "non-empty"),
    "number_prompt": ("p.jsonl", b'{"text": 3}\n', "p.jsonl:1", '"text"'),
}


@pytest.mark.parametrize("kind", sorted(BAD_PROMPTS))
def test_bad_prompts_files(tmp_path, kind) -> None:
    name, content, where, words = BAD_PROMPTS[kind]
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(PromptsError) as info:
        read_prompts_file(path)
    assert "\n" not in str(info.value)
    assert info.value.where == f"{tmp_path}/{where}"
    assert words in info.value.problem


# ---- fuzzing: only CrossLoraError may come out -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_TOKENIZER_FIELDS = ["model", "decoder", "normalizer", "pre_tokenizer", "post_processor", "added_tokens", "version",
                     "truncation", "padding"]  # fmt: skip
_MODEL_FIELDS = ["type", "vocab", "merges", "unk_token", "byte_fallback", "continuing_subword_prefix", "dropout"]


def _exercise(folder: Path) -> None:
    with contextlib.suppress(CrossLoraError):
        tok = read_tokenizer(folder)
        tok.decode(tok.encode("the x é\n"))
        generic_starts(tok)
        shared_vocabulary(tok, _fixture("bytes"))
        retokenize([[1, 2, 3]], tok, _fixture("bytes"))
        same_vocabulary(tok, _fixture("bpe"))


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_tokenizer_files(data) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.json").write_bytes(data)
        _exercise(Path(d))
        (Path(d) / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}')
        for name in ("tokenizer_config.json", "config.json", "chat_template.jinja"):
            (Path(d) / name).write_bytes(data)
            _exercise(Path(d))


@FUZZ
@given(top=st.dictionaries(st.sampled_from(_TOKENIZER_FIELDS), json_values, max_size=3),
       model=st.dictionaries(st.sampled_from(_MODEL_FIELDS), json_values | st.sampled_from(["BPE", "WordLevel", "Unigram", "WordPiece"]), max_size=3),
       vocab=st.dictionaries(st.text(max_size=3), st.integers(-2, 400), max_size=6))  # fmt: skip
def test_mangled_tokenizer_json(folders, top, model, vocab) -> None:
    raw = _bpe_json(folders)
    raw["model"] = {**raw["model"], "vocab": {**raw["model"]["vocab"], **vocab}, **model}
    raw.update(top)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.json").write_text(json.dumps(raw))
        _exercise(Path(d))


@FUZZ
@given(config=st.dictionaries(st.sampled_from(["bos_token", "eos_token", "chat_template", "pad_token"]),
                              json_values | st.sampled_from(["<s>", "</s>", "zz"]), max_size=3),
       model=st.dictionaries(st.sampled_from(["vocab_size", "bos_token_id", "eos_token_id", "text_config"]),
                             json_values | st.integers(-1, 400), max_size=3))  # fmt: skip
def test_mangled_tokenizer_config(folders, config, model) -> None:
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(folders["bpe"] / "tokenizer.json", Path(d))
        (Path(d) / "tokenizer_config.json").write_text(json.dumps(config))
        (Path(d) / "config.json").write_text(json.dumps(model))
        _exercise(Path(d))


@FUZZ
@given(
    data=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    suffix=st.sampled_from([".txt", ".jsonl"]),
)
def test_random_bytes_as_prompts_file(data, suffix) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"prompts{suffix}"
        path.write_bytes(data)
        with contextlib.suppress(PromptsError):
            prompts = read_prompts_file(path)
            assert prompts and all(isinstance(p, str) and p for p in prompts)
