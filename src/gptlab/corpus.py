"""A corpus as a stream of documents, each a stream of pieces cut where GPT-2's pre-tokenizer cannot join across.

Sources: a text file, a folder of `.txt` / `.jsonl` / `.parquet` files, or a Hugging Face `datasets` dataset (a
`.txt` file is one document, a `.jsonl` line or a parquet/dataset row one). Files are checked whole, in blocks,
before any of them is used; a bad one is named. `gptlab prepare` tokenizes the pieces (prepare.py).
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import DataError

if TYPE_CHECKING:
    from .prepare import PrepareConfig

# --------------------------------------------------------------------------------------------------------
# Cutting a document where GPT-2's pre-tokenizer cannot join across
# --------------------------------------------------------------------------------------------------------
#
# tiktoken first splits text with the pattern
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
# and then applies BPE inside each piece, so text[:i] and text[i:] encode to the whole text's tokens exactly
# when the pattern matches the same pieces in them as in the whole, with a boundary at i. Two kinds of i do:
#
# * just before a "\n" that is followed by a non-space character c. In the whole text, the whitespace run
#   ending with that "\n" is matched as run[:-1] by \s+(?!\S) (it backtracks so the next char is space), then
#   the lone "\n" by \s, since ` ?\p{L}` and friends take only a literal space in front. Alone, text[:i] ends
#   with run[:-1], which \s++$ matches the same; text[i:] starts with "\n" + c, matched the same. No
#   alternative looks behind, so everything after i is matched as in the whole.
# * at a space between two ASCII letters: the word before ends there (\p{L}++ stops at the space) and
#   ` ?\p{L}++` takes the space with the next word, in the whole text and in text[i:] alike.
#
# "Certainly not whitespace" must agree with the regex engine's \s (Unicode White_Space), which is not
# Python's str.isspace (e.g. \x1c-\x1f); printable ASCII and letters/digits are never White_Space.
# tests/test_prepare.py checks the rule against encoding the whole text, on runs of spaces and newlines,
# CRLF, Unicode spaces, contractions and digits.


def _newline_cut(text: str, i: int) -> bool:
    return text[i] == "\n" and i + 1 < len(text) and ("!" <= text[i + 1] <= "~" or text[i + 1].isalnum())


def _space_cut(text: str, i: int) -> bool:
    return text[i] == " " and i + 1 < len(text) and _ascii_letter(text[i - 1]) and _ascii_letter(text[i + 1])


def _ascii_letter(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _last_cut(text: str, start: int, end: int) -> int:
    """The last safe cut position i with start <= i < end (see above), or 0 if there is none."""
    start = max(start, 1)  # a cut at 0 would make an empty piece
    for char, ok in (("\n", _newline_cut), (" ", _space_cut)):  # line breaks first, then between words
        i = text.rfind(char, start, end)
        while i >= start and not ok(text, i):
            i = text.rfind(char, start, i)
        if i >= start:
            return i
    return 0


def _first_cut(text: str, start: int) -> int:
    """The first safe cut position at or after `start`, or 0 if there is none."""
    found = []
    for char, ok in (("\n", _newline_cut), (" ", _space_cut)):
        i = text.find(char, max(start, 1))
        while i != -1 and not ok(text, i):
            i = text.find(char, i + 1)
        if i != -1:
            found.append(i)
    return min(found, default=0)


def safe_cuts(text: str, chunk_chars: int) -> list[int]:
    """Cut positions that split `text` into pieces of at most about `chunk_chars` characters, each piece
    tokenizing to its part of the whole text's GPT-2 tokens. A stretch with no safe cut stays whole."""
    cuts: list[int] = []
    pos = 0
    while len(text) - pos > chunk_chars:
        cut = _last_cut(text, pos + 1, pos + chunk_chars + 1) or _first_cut(text, pos + chunk_chars + 1)
        if not cut:
            break
        cuts.append(cut)
        pos = cut
    return cuts


def _split_document(text: str, chunk_chars: int) -> Iterator[str]:
    pos = 0
    for cut in safe_cuts(text, chunk_chars):
        yield text[pos:cut]
        pos = cut
    yield text[pos:]


# --------------------------------------------------------------------------------------------------------
# Sources: documents as streams of pieces
# --------------------------------------------------------------------------------------------------------

FILE_KINDS = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
Document = Iterator[tuple[str, int]]  # the pieces of one document with the input bytes each stands for


class BadFile(DataError):
    """An input file that cannot be read as text; --skip_bad_files leaves such files out."""


def _binary_or_utf8_error(path: Path, data: bytes, base: int, final: bool, decoder: Any) -> None:
    nul = data.find(b"\0")
    if nul >= 0:  # valid UTF-8 but no text file has NUL bytes: almost surely binary
        raise BadFile(f"{path} looks binary (NUL byte at byte offset {base + nul})")
    pending = len(decoder.getstate()[0])  # bytes of a character split across the previous block
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError as e:
        raw, where = e.object[e.start] if e.start < len(e.object) else 0, base - pending + e.start
        raise BadFile(f"{path} is not valid UTF-8 (byte 0x{raw:02x} at byte offset {where})") from None


def _check_text_file(path: Path, block: int) -> None:
    """BadFile unless the whole file is UTF-8 without NUL bytes (read in blocks, never whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    base = 0
    with open(path, "rb") as f:
        while data := f.read(block):
            _binary_or_utf8_error(path, data, base, False, decoder)
            base += len(data)
    _binary_or_utf8_error(path, b"", base, True, decoder)


def _text_file(path: Path, chunk_chars: int) -> Document:
    """The pieces of a UTF-8 text file, read block by block; a piece ends just before a safe cut."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()  # -sig: a leading BOM is not text
    buf, searched, unreported = "", 1, 0
    with open(path, "rb") as f:
        while data := f.read(chunk_chars):
            buf += decoder.decode(data)
            unreported += len(data)
            if len(buf) < chunk_chars:
                continue
            cut = _last_cut(buf, searched - 1, len(buf))  # -1: the char after the old end is known now
            if cut:
                yield buf[:cut], unreported
                buf, unreported = buf[cut:], 0
            searched = len(buf)  # no cut before here: do not search this stretch again
    buf += decoder.decode(b"", final=True)
    if buf or unreported:
        yield buf, unreported


def _jsonl_rows(path: Path, field: str) -> Iterator[tuple[str, int]]:
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadFile(f"{path} line {line_no} is not a JSON object ({e})") from None
            text = row.get(field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise BadFile(f"{path} line {line_no} has no {field!r} string field (use --text_field=NAME)")
            yield text, len(line)


def _check_jsonl(path: Path, field: str, block: int) -> None:
    _check_text_file(path, block)
    for _ in _jsonl_rows(path, field):  # every line parses and has the field, before any is used
        pass


def _require(module: str, what: str, extra: str) -> Any:
    if importlib.util.find_spec(module) is None:
        raise DataError(f"{what} needs the {module} package: pip install 'gptlab[{extra}]'")
    return importlib.import_module(module)


def _parquet_file(path: Path, field: str) -> Any:
    _require("pyarrow", f"reading {path}", "parquet")
    pq = importlib.import_module("pyarrow.parquet")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid and friends: not a parquet file
        raise BadFile(f"{path} is not a readable parquet file ({' '.join(str(e).split())})") from None
    if field not in pf.schema_arrow.names:
        raise BadFile(f"{path} has no {field!r} column (it has {', '.join(pf.schema_arrow.names)}); "
                      "use --text_field=NAME")
    return pf


def _parquet_rows(path: Path, field: str) -> Iterator[tuple[str, int]]:
    for batch in _parquet_file(path, field).iter_batches(batch_size=1024, columns=[field]):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text, len(text.encode("utf-8"))


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _dataset_rows(src: str, cfg: PrepareConfig) -> Iterator[tuple[str, int]]:
    """Rows of a Hugging Face dataset: saved with save_to_disk at path `src`, or a hub name (streamed)."""
    datasets = _require("datasets", f"the Hugging Face dataset {src}", "datasets")
    field = cfg.text_field
    path = Path(src).expanduser()
    if path.exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise DataError(f"{src} has no split {cfg.split!r} (it has {', '.join(ds)}); use --split=NAME")
            ds = ds[cfg.split]
        if field not in ds.column_names:
            raise DataError(f"{src} has no {field!r} column (it has {', '.join(ds.column_names)}); "
                            "use --text_field=NAME")
        # batches of the text column only: memory of 1000 rows, not of the dataset
        rows: Iterator[Any] = (t for batch in ds.select_columns([field]).iter(batch_size=1000) for t in batch[field])
    else:
        try:  # needs the network: https://huggingface.co/datasets/<src>
            ds = datasets.load_dataset(src, cfg.hub_config, split=cfg.split, streaming=True)
        except Exception as e:  # offline, unknown name, bad config or split: datasets' many error types
            raise DataError(f"cannot open the hub dataset {src!r} ({' '.join(str(e).split())[:300]})") from None
        rows = (_field(row, field, src) for row in ds)
    for text in rows:
        if text is not None and not isinstance(text, str):
            raise DataError(f"{src}: field {field!r} holds {type(text).__name__}, not text; use --text_field=NAME")
        if text is not None:
            yield text, len(text.encode("utf-8"))


def _field(row: dict[str, Any], field: str, src: str) -> Any:
    if field not in row:
        raise DataError(f"{src} has no {field!r} field (it has {', '.join(row)}); use --text_field=NAME")
    return row[field]


@dataclass
class Source:
    """What SRC is: its kind, the files it holds (sorted), a fingerprint, and its size in bytes if known."""

    kind: str  # "text", "jsonl", "parquet" (a file), "folder", "dataset" (save_to_disk) or "hub"
    files: list[Path]
    fingerprint: dict[str, Any]
    total_bytes: int | None


def find_source(src: str, cfg: PrepareConfig) -> Source:
    """Resolve SRC, or DataError naming what to pass instead."""
    path = Path(src).expanduser()
    extra: dict[str, Any] = {}  # what else picks the documents
    if path.is_file():
        kind = FILE_KINDS.get(path.suffix.lower(), "text")  # a single file of any other name is text
        files = [path]
    elif path.is_dir() and _is_saved_dataset(path):
        kind, files = "dataset", sorted(p for p in path.rglob("*") if p.is_file())
        extra = {"split": cfg.split}
    elif path.is_dir():
        kind = "folder"
        files = sorted((p for p in path.rglob("*") if p.suffix.lower() in FILE_KINDS and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise DataError(f"{path} holds no .txt, .jsonl or .parquet files (subfolders included); pass a "
                            "folder of such files, a text file, or a dataset saved with datasets' save_to_disk")
    elif importlib.util.find_spec("datasets") is not None and "/" in src and not src.startswith((".", "/", "~")):
        return Source("hub", [], {"hub": src, "config": cfg.hub_config, "split": cfg.split}, None)
    else:
        raise DataError(f"SRC not found: {src}; pass a text file, a folder of .txt/.jsonl/.parquet files, a "
                        "dataset saved with save_to_disk, or a hub dataset name (pip install 'gptlab[datasets]')")
    # Names and sizes, not contents: enough to refuse resuming on a corpus that changed, without a read.
    listing = hashlib.sha256()
    total = 0
    for f in files:
        size = f.stat().st_size
        listing.update(f"{f.relative_to(path).as_posix() if f != path else f.name}\0{size}\0".encode())
        total += size
    return Source(kind, files, {"kind": kind, "files": len(files), "bytes": total,
                                "listing_sha256": listing.hexdigest(), **extra}, total)


def documents(source: Source, src: str, cfg: PrepareConfig, skipped: list[str]) -> Iterator[Document]:
    """Every document of the source, in a fixed order (files sorted by path), as an iterator of pieces."""
    if source.kind in ("dataset", "hub"):
        for text, nbytes in _dataset_rows(src, cfg):
            yield _with_bytes(_split_document(text, cfg.chunk_chars), nbytes)
        return
    for path in source.files:
        kind = FILE_KINDS.get(path.suffix.lower(), "text") if source.kind == "folder" else source.kind
        try:  # the whole file is checked before any of it is used, so a bad one is left out whole
            if kind == "text":
                _check_text_file(path, cfg.chunk_chars)
            elif kind == "jsonl":
                _check_jsonl(path, cfg.text_field, cfg.chunk_chars)
            else:
                _parquet_file(path, cfg.text_field)
        except BadFile as e:
            if not cfg.skip_bad_files:
                raise BadFile(f"{e}; convert or remove it, or pass --skip_bad_files=True to leave such files "
                              "out") from None
            print(f"gptlab: skipping {e}", file=sys.stderr)
            skipped.append(str(e))
            continue
        if kind == "text":
            yield _text_file(path, cfg.chunk_chars)
        else:
            rows = _jsonl_rows(path, cfg.text_field) if kind == "jsonl" else _parquet_rows(path, cfg.text_field)
            for text, nbytes in rows:
                yield _with_bytes(_split_document(text, cfg.chunk_chars), nbytes)


def _with_bytes(pieces: Iterator[str], nbytes: int) -> Document:
    """Pieces of an in-memory document; the document's input bytes are counted on its first piece."""
    for i, piece in enumerate(pieces):
        yield piece, nbytes if i == 0 else 0
