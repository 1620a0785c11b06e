"""A model folder's tokenizer (`tokenizer.json`, `tokenizer_config.json`), vocabulary comparison,
re-tokenisation, and the prompts a teacher samples from (generic starts or a user's prompts file).

Only data is read: `tokenizer.json` is parsed by the `tokenizers` library (plain JSON into Rust
structs), and a chat template is kept as a string, never rendered (rendering Jinja is running
code shipped in the model folder). `encode` never adds special tokens: callers prepend `bos_id`
themselves where the model wants it.

Vocabularies are compared by what a token stands for, not by its spelling in the file: byte-level
BPE writes a space as "Ġ", SentencePiece-style files as "▁", and byte fallback as "<0x20>".
Each token's *surface* is the bytes it decodes to in the middle of a text (`_surfaces`):
- a `ByteLevel` decoder: every character through GPT-2's byte↔character table;
- a `Metaspace` decoder or a `Replace("▁", " ")` one: the replacement character is a space, and
  with `ByteFallback` "<0xNN>" is the byte NN;
- a `WordPiece` decoder: unknown (its word starts have an implicit space), never matched;
- no decoder or any other: the token's UTF-8 spelling.
Added tokens are their content as written; special ones match only special ones of the same content.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import numpy as np
import tokenizers

from crosslora_jax._errors import ConfigError, PromptsError, TokenizerError
from crosslora_jax.io._json import parse_json_object, read_json_object, require_dir

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_MODEL_CONFIG_FILE = "config.json"
_SENTENCEPIECE_FILE = "tokenizer.model"
_MAX_IDS = 2**31 - 1  # ids travel as int32

# Data-free starts for a tokenizer without BOS: common first tokens of prose, code and lists.
# Each is reduced to its first token so every start is one token long (batches need no padding).
GENERIC_STARTS = ("The", "A", "In", "I", "This", "It", "We", "def", "import", "#", "1", "-", '"', "(", "\n", " ")

# A Surface is what a token means across tokenizers: (is_special, bytes) or None when unknown.
Surface = tuple[bool, bytes] | None


@dataclasses.dataclass(frozen=True, eq=False)
class ModelTokenizer:
    """A model's tokenizer: text ↔ ids, its special ids, and its chat template (as data).

    `vocab_size` is the number of ids the tokenizer can produce (largest id + 1); a model's
    embedding may have more rows (padding), which no text maps to. `eos_ids` may hold several
    ids (tokenizer_config.json's eos_token plus config.json's eos_token_id entries).
    """

    path: Path  # the tokenizer.json
    vocab_size: int
    bos_id: int | None
    eos_ids: tuple[int, ...]
    special_ids: frozenset[int]
    chat_template: str | None
    _tokenizer: tokenizers.Tokenizer = dataclasses.field(repr=False)
    _decoder: Mapping[str, Any] | None = dataclasses.field(repr=False)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        try:
            return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        except Exception as e:  # e.g. a WordLevel model whose unk_token is not in its vocabulary
            raise TokenizerError(self.path, f"cannot encode: {_one_line(e)}") from None

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """The text of `ids`; ids without a token are dropped, invalid UTF-8 becomes U+FFFD."""
        try:
            return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)
        except Exception as e:
            raise TokenizerError(self.path, f"cannot decode: {_one_line(e)}") from None

    @functools.cached_property
    def vocab(self) -> Mapping[str, int]:
        """token string → id, added tokens included."""
        return dict(self._tokenizer.get_vocab(with_added_tokens=True))

    @functools.cached_property
    def _surfaces(self) -> dict[int, Surface]:
        """id → surface (module docstring)."""
        added = self._tokenizer.get_added_tokens_decoder()
        plain = _surface_rule(self._decoder)
        out: dict[int, Surface] = {}
        for token, i in self.vocab.items():
            if i in added:
                out[i] = (bool(added[i].special), added[i].content.encode("utf-8"))
            else:
                surface = plain(token)
                out[i] = None if surface is None else (False, surface)
        return out


def load_tokenizer(model_dir: Path | str) -> tokenizers.Tokenizer:
    """The `tokenizers.Tokenizer` of `model_dir`/tokenizer.json, as the library reads it (the
    evaluator's tokenizer; `read_tokenizer` adds the checks distillation needs). `TokenizerError`
    naming the file when it is missing or the library refuses it."""
    path = Path(model_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise TokenizerError(path, "file not found; the evaluator tokenises with the model's own tokenizer.json")
    return _parse(path)


def read_tokenizer(model_dir: Path | str) -> ModelTokenizer:
    """Read `model_dir`/tokenizer.json (+ tokenizer_config.json, chat_template.jinja, if there).

    Raises `TokenizerError` naming the file for a missing or unreadable tokenizer, one the library
    refuses, an empty vocabulary, added tokens whose ids disagree with the file, an id spelled two
    ways, special tokens not in the vocabulary, or more ids than config.json's `vocab_size` (checked when config.json
    exists; a tokenizer-only folder is fine). `ConfigError` for a malformed config.json.
    """
    folder = require_dir(Path(model_dir), TokenizerError, "model")
    path = folder / TOKENIZER_FILE
    if not path.exists() and (folder / _SENTENCEPIECE_FILE).exists():
        raise TokenizerError(
            path,
            "file not found (only a SentencePiece tokenizer.model is there; save the tokenizer with "
            "transformers' save_pretrained to get a tokenizer.json)",
        )
    raw = read_json_object(path, TokenizerError)
    if not isinstance(raw.get("model"), dict):
        raise TokenizerError(path, "not a tokenizer file: no 'model' object")
    decoder = raw.get("decoder")
    tok = _parse(path)
    vocab = tok.get_vocab(with_added_tokens=True)
    if not vocab:
        raise TokenizerError(path, "the vocabulary is empty")
    _check_added_token_ids(path, raw, vocab)
    _check_ids_unique(path, vocab)
    vocab_size = max(vocab.values()) + 1
    if vocab_size > _MAX_IDS:
        raise TokenizerError(path, f"token id {vocab_size - 1} is too large")
    model_vocab, bos_cfg, eos_cfg = _model_config_ids(folder / _MODEL_CONFIG_FILE, vocab_size)
    if model_vocab is not None and vocab_size > model_vocab:
        raise TokenizerError(
            path, f"the tokenizer has ids up to {vocab_size - 1} but config.json's vocab_size is {model_vocab}"
        )
    config_path = folder / TOKENIZER_CONFIG_FILE
    config = read_json_object(config_path, TokenizerError) if config_path.exists() else {}
    bos = _special_id(config_path, config, "bos_token", vocab)
    eos = _special_id(config_path, config, "eos_token", vocab)
    specials = frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    return ModelTokenizer(
        path=path,
        vocab_size=vocab_size,
        bos_id=bos if bos is not None else bos_cfg,
        eos_ids=tuple(dict.fromkeys([*([eos] if eos is not None else []), *eos_cfg])),
        special_ids=specials,
        chat_template=_chat_template(folder, config_path, config),
        _tokenizer=tok,
        _decoder=decoder if isinstance(decoder, dict) else None,
    )


def same_vocabulary(a: ModelTokenizer, b: ModelTokenizer) -> bool:
    """True when the token→id maps are identical and the tokens mean the same bytes, so the two
    models' logits index the same tokens (token-level KL applies)."""
    return a.vocab == b.vocab and a._surfaces == b._surfaces


def shared_vocabulary(
    a: ModelTokenizer, b: ModelTokenizer
) -> tuple[Annotated[np.ndarray, "S"], Annotated[np.ndarray, "S"]]:
    """Ids (int32, [S] each, sorted by `ids_a`) of the tokens both vocabularies have: token
    ids_a[i] of `a` stands for the same text as ids_b[i] of `b` (same surface, module docstring).

    One-to-one: where several ids of one tokenizer share a surface (e.g. "▁" and "<0x20>"), the
    lowest id is used. Tokens of unknown surface are never shared.
    """
    first_a, first_b = _first_id_by_surface(a), _first_id_by_surface(b)
    pairs = sorted((i, first_b[s]) for s, i in first_a.items() if s in first_b)
    ids = np.asarray(pairs, np.int32).reshape(-1, 2)
    return ids[:, 0].copy(), ids[:, 1].copy()


NO_BYTE = 256  # `first_bytes` of a special token, or one of unknown or empty surface


def first_bytes(tok: ModelTokenizer, size: int | None = None) -> Annotated[np.ndarray, "V"]:
    """For every id (int32 [size], default `vocab_size`), the first byte of the text its token
    stands for (0-255), or `NO_BYTE` for a special token, one whose surface is unknown or empty,
    and ids without a token (a model's embedding padding). Summing a model's next-token
    probabilities by this map gives its distribution of the next byte of the text, which two
    models with different vocabularies share."""
    size = tok.vocab_size if size is None else size
    out = np.full(size, NO_BYTE, np.int32)
    for i, surface in tok._surfaces.items():
        if i < size and surface is not None and not surface[0] and surface[1]:
            out[i] = surface[1][0]
    return out


def _first_id_by_surface(tok: ModelTokenizer) -> dict[tuple[bool, bytes], int]:
    first: dict[tuple[bool, bytes], int] = {}
    for i, surface in sorted(tok._surfaces.items()):
        if surface is not None:
            first.setdefault(surface, i)
    return first


def retokenize(
    ids: Annotated[np.ndarray, "B T"] | Sequence[Sequence[int]],
    a: ModelTokenizer,
    b: ModelTokenizer,
    *,
    mask: Annotated[np.ndarray, "B T"] | None = None,
    add_bos: bool = True,
    max_len: int | None = None,
) -> tuple[Annotated[np.ndarray, "B U"], Annotated[np.ndarray, "B U"]]:
    """Sequences of `a`'s ids as `b`'s ids: each row decoded with `a` (special tokens dropped)
    and encoded with `b`, with `b`'s BOS first when it has one and `add_bos`.

    `mask` (bool [B, T], optional) marks the tokens to keep (e.g. False after an EOS). Returns
    `(ids_b, mask_b)`: int32 [B, U] right-padded with 0 and bool [B, U] True on real tokens, U the
    longest row, or `max_len` with longer rows cut at the end. Bytes `a` generated that are not
    valid UTF-8 become U+FFFD (its UTF-8 bytes in `b`'s encoding).
    """
    rows = [list(r) for r in ids] if mask is None else [list(np.asarray(r)[m]) for r, m in zip(ids, mask, strict=True)]
    encoded = b.encode_batch([a.decode(r) for r in rows])
    prefix = [b.bos_id] if add_bos and b.bos_id is not None else []
    return _padded([prefix + e for e in encoded], max_len)


def _padded(seqs: Sequence[Sequence[int]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows right-padded with 0 to `width` (default: the longest; longer rows cut), and the mask
    of real tokens."""
    width = max((len(s) for s in seqs), default=0) if width is None else width
    out = np.zeros((len(seqs), width), np.int32)
    keep = np.zeros((len(seqs), width), bool)
    for row, s in enumerate(seqs):
        s = list(s)[:width]
        out[row, : len(s)] = s
        keep[row, : len(s)] = True
    return out, keep


class AlignedTexts(NamedTuple):
    """One set of texts tokenized by two tokenizers, with the positions where both have read the
    same bytes. Legend: B texts, U_a / U_b the longer row of each tokenization.

    `a_ids` / `b_ids` (int32) each start with the tokenizer's BOS when it has one and are
    right-padded with 0; `a_mask` / `b_mask` (bool) are True on real tokens. `a_position[i, q]`
    (int32 [B, U_b − 1]) is, for the position of `b` whose input is b_ids[i, q] (predicting
    b_ids[i, q + 1]), the position p of `a` (input a_ids[i, p], predicting a_ids[i, p + 1]) after
    which exactly the same bytes of the text have been read, or −1 when there is none: the two
    models' next-token distributions there are predictions of the same continuation.
    """

    a_ids: Annotated[np.ndarray, "B U_a"]
    a_mask: Annotated[np.ndarray, "B U_a"]
    b_ids: Annotated[np.ndarray, "B U_b"]
    b_mask: Annotated[np.ndarray, "B U_b"]
    a_position: Annotated[np.ndarray, "B U_b-1"]


def retokenize_aligned(
    ids: Annotated[np.ndarray, "B T"] | Sequence[Sequence[int]],
    a: ModelTokenizer,
    b: ModelTokenizer,
    *,
    mask: Annotated[np.ndarray, "B T"] | None = None,
) -> AlignedTexts:
    """`a`'s sequences as text (as `retokenize` decodes them), encoded again by `a` and by `b`,
    and the positions where the two tokenizations meet (`AlignedTexts`).

    Bytes read are counted through each token's surface (module docstring): a position is after
    the surfaces of its input tokens, BOS excluded. A tokenizer that prefixes the text (a
    Metaspace "▁" before the first word) is allowed for by the bytes its surfaces have beyond the
    text; a row whose surfaces do not spell its text (a token of unknown surface, a normalizer
    that changes the text) gets no aligned position.
    """
    rows = [list(r) for r in ids] if mask is None else [list(np.asarray(r)[m]) for r, m in zip(ids, mask, strict=True)]
    texts = [a.decode(r) for r in rows]
    a_ids, a_mask, a_read = _encode_counting_bytes(a, texts)
    b_ids, b_mask, b_read = _encode_counting_bytes(b, texts)
    position = np.full((len(texts), max(b_ids.shape[1] - 1, 0)), -1, np.int32)
    for row, (ra, rb) in enumerate(zip(a_read, b_read, strict=True)):
        if ra is None or rb is None:
            continue
        # the last token predicts nothing; of positions that read the same bytes (a token of empty
        # surface between them), the last is the one whose next token continues the text
        where_a = {n: p for p, n in enumerate(ra[:-1])}
        where_b = {n: q for q, n in enumerate(rb[:-1])}
        for n, q in where_b.items():
            position[row, q] = where_a.get(n, -1)
    return AlignedTexts(a_ids, a_mask, b_ids, b_mask, position)


def _encode_counting_bytes(
    tok: ModelTokenizer, texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[list[int] | None]]:
    """Each text as BOS + ids (padded, mask) and, per row, the bytes of the text read after each
    token (None where the surfaces do not spell the text)."""
    prefix = [tok.bos_id] if tok.bos_id is not None else []
    encoded = tok.encode_batch(texts)
    out, keep = _padded([prefix + e for e in encoded])
    read: list[list[int] | None] = []
    for text, e in zip(texts, encoded, strict=True):
        surfaces = [tok._surfaces.get(i) for i in e]
        if any(s is None for s in surfaces):
            read.append(None)
            continue
        spelled = b"".join(s[1] for s in surfaces)  # type: ignore[index]
        data = text.encode("utf-8")
        extra = len(spelled) - len(data)
        if extra < 0 or spelled[extra:] != data or spelled[:extra].strip():
            read.append(None)
            continue
        counts = np.cumsum([len(s[1]) for s in surfaces]) - extra  # type: ignore[index]
        # a token of the tokenizer's own prefix reads no byte of the text
        read.append([0] * len(prefix) + [max(int(c), 0) for c in counts])
    return out, keep, read


def generic_starts(tok: ModelTokenizer) -> Annotated[np.ndarray, "P 1"]:
    """Data-free prompts for a teacher to sample from, int32 [P, 1] (one token each).

    With a BOS token: just BOS ([[bos]]), the model's own start of a document; sampling at a
    temperature gives the variety. Without: the first token of each of `GENERIC_STARTS`, in that
    order, duplicates dropped. The chat template is not used: rendering it would execute it.
    """
    if tok.bos_id is not None:
        return np.asarray([[tok.bos_id]], np.int32)
    firsts = [e[0] for e in tok.encode_batch(GENERIC_STARTS) if e]
    if not firsts:
        raise TokenizerError(tok.path, "none of the generic start strings encodes to a token")
    return np.asarray(list(dict.fromkeys(firsts)), np.int32)[:, None]


def read_prompts_file(path: Path | str) -> tuple[str, ...]:
    """A user's seed prompts. `*.jsonl`: one JSON object per line with a string "prompt" (or,
    if absent, "text") field; any other name: plain text, one prompt per line (line endings
    removed, the rest kept as is; multi-line prompts need JSONL). Blank lines are skipped; a
    UTF-8 byte-order mark is allowed. `PromptsError` naming the file (and line) for a missing
    file, bytes that are not UTF-8, a malformed JSON line, a line without a non-empty string
    prompt, or no prompts at all.
    """
    path = Path(path)
    if not path.exists():
        raise PromptsError(path, "file not found")
    if not path.is_file():
        raise PromptsError(path, "expected a file, found a folder")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PromptsError(path, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PromptsError(f"{path}:{line}", f"not UTF-8 text (byte {e.start})") from None
    lines = text.split("\n")
    parse = _jsonl_prompt if path.suffix == ".jsonl" else _text_prompt
    prompts = tuple(parse(f"{path}:{n}", line.removesuffix("\r")) for n, line in enumerate(lines, 1) if line.strip())
    if not prompts:
        raise PromptsError(path, "no prompts in the file")
    return prompts


def _text_prompt(_where: str, line: str) -> str:
    return line


def _jsonl_prompt(where: str, line: str) -> str:
    item = parse_json_object(line, where, PromptsError)
    key = "prompt" if "prompt" in item else "text"
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise PromptsError(where, 'expected a non-empty string field "prompt" or "text"')
    return value


def _parse(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # a Rust panic arrives as pyo3's PanicException, a BaseException
        raise TokenizerError(path, f"not a valid tokenizer: {_one_line(e)}") from None


def _check_added_token_ids(path: Path, raw: Mapping[str, Any], vocab: Mapping[str, int]) -> None:
    """The library renumbers an added token whose id is taken or missing; refuse such files."""
    added = raw.get("added_tokens")
    for entry in added if isinstance(added, list) else []:
        if isinstance(entry, dict) and entry.get("content") in vocab and vocab[entry["content"]] != entry.get("id"):
            raise TokenizerError(
                path,
                f"added token {entry['content']!r} says id {entry.get('id')!r} but the vocabulary "
                f"gives it {vocab[entry['content']]}",
            )


def _check_ids_unique(path: Path, vocab: Mapping[str, int]) -> None:
    """Two spellings for one id would make decoding and vocabulary comparison ambiguous."""
    if len(set(vocab.values())) == len(vocab):
        return
    by_id: dict[int, str] = {}
    for token, i in sorted(vocab.items(), key=lambda item: (item[1], item[0])):
        if i in by_id:
            raise TokenizerError(path, f"id {i} is used by two tokens, {by_id[i]!r} and {token!r}")
        by_id[i] = token


def _model_config_ids(path: Path, vocab_size: int) -> tuple[int | None, int | None, tuple[int, ...]]:
    """config.json's (vocab_size, bos_token_id, eos_token_id entries); (None, None, ()) without one."""
    if not path.exists():
        return None, None, ()
    raw = read_json_object(path, ConfigError)
    text = raw.get("text_config")
    model_vocab = raw.get("vocab_size", text.get("vocab_size") if isinstance(text, dict) else None)
    model_vocab = model_vocab if _is_int(model_vocab) and model_vocab > 0 else None

    def ids(field: str) -> list[int]:
        value = raw.get(field)
        values = value if isinstance(value, list) else [] if value is None else [value]
        for v in values:
            if not _is_int(v) or not 0 <= v < vocab_size:
                raise ConfigError(path, f"field {field!r}: {v!r} is not a token id below {vocab_size}")
        return values

    bos = ids("bos_token_id")
    return model_vocab, bos[0] if bos else None, tuple(ids("eos_token_id"))


def _special_id(path: Path, config: Mapping[str, Any], field: str, vocab: Mapping[str, int]) -> int | None:
    """The id of tokenizer_config.json's `field` (a string or an {"content": ...} object), or None."""
    value = config.get(field)
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return None
    if not isinstance(value, str):
        raise TokenizerError(path, f"field {field!r} must be a token string, found {type(value).__name__}")
    if value not in vocab:
        raise TokenizerError(path, f"{field} {value!r} is not in tokenizer.json's vocabulary")
    return vocab[value]


def _chat_template(folder: Path, config_path: Path, config: Mapping[str, Any]) -> str | None:
    """chat_template.jinja if present (transformers prefers it), else tokenizer_config.json's
    `chat_template`: a string, or a list of {"name", "template"} where "default" (else the first)
    is taken. Read as text only."""
    jinja = folder / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(jinja, f"cannot read: {_one_line(e)}") from None
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in value)
    ):
        named = [t for t in value if t.get("name") == "default"]
        return (named or value)[0]["template"]
    raise TokenizerError(config_path, "field 'chat_template' must be a string or a list of {name, template}")


def _surface_rule(decoder: Mapping[str, Any] | None) -> Callable[[str], bytes | None]:
    """How a (non-added) token's spelling maps to its bytes, from the decoder's JSON (module docstring)."""
    parts = _decoder_parts(decoder)
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        table = byte_level_alphabet()

        def byte_level(token: str) -> bytes | None:
            try:
                return bytes(table[c] for c in token)
            except KeyError:
                return None

        return byte_level
    if "WordPiece" in types:
        return lambda _token: None
    space = [p.get("replacement", "▁") for p in parts if p.get("type") == "Metaspace"]
    space += [
        p["pattern"]["String"]
        for p in parts
        if p.get("type") == "Replace" and isinstance(p.get("pattern"), dict) and p.get("content") == " "
        if isinstance(p["pattern"].get("String"), str) and p["pattern"]["String"]
    ]
    fallback = "ByteFallback" in types

    def plain(token: str) -> bytes:
        if fallback and (m := _BYTE_TOKEN.fullmatch(token)):
            return bytes([int(m.group(1), 16)])
        for s in space:
            token = token.replace(s, " ")
        return token.encode("utf-8")

    return plain


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _decoder_parts(decoder: Any) -> list[Mapping[str, Any]]:
    if not isinstance(decoder, dict):
        return []
    if decoder.get("type") == "Sequence" and isinstance(decoder.get("decoders"), list):
        return [p for d in decoder["decoders"] for p in _decoder_parts(d)]
    return [decoder]


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character → byte: printable bytes stand for themselves, the
    other 68 for chr(256 + k) (also what `synthetic.write_tokenizer`'s bpe fixture writes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + k): b for k, b in enumerate(others)}}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
