"""`gptlab prepare SRC OUT`: a text corpus -> GPT-2 token shards in llm.c's `.bin` format, in bounded memory.

The pipeline, one section below per stage:

1. Sources: a text file, a folder of `.txt` / `.jsonl` / `.parquet` files, or a Hugging Face `datasets` dataset,
   read as a stream of documents (a `.txt` file is one document, a `.jsonl` line or a parquet/dataset row one).
2. Pieces: a long document is cut into pieces of about `chunk_chars` characters, only at points where GPT-2's
   pre-tokenizer cannot join across, so the pieces' tokens put end to end are the whole document's tokens.
   Worker processes tokenize the pieces; the results come back in input order whatever the workers' timing.
3. Shards: every document is `<|endoftext|>` followed by its tokens (llm.c's layout), and the stream is cut
   into shards of `shard_tokens` tokens. A shard is written to a temp file, fsynced and renamed into place,
   then recorded in `OUT/manifest.json` with where in the piece stream the next shard starts: a killed run,
   rerun, keeps its finished shards and continues from there to exactly the shards of an uninterrupted run.
4. Reading: `read_shard()` maps a shard (ours, llm.c's or modded-nanogpt's) as a read-only numpy array.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import importlib.util
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .data import DataError
from .tokenizer import get_tokenizer

__all__ = ["PrepareConfig", "main", "prepare", "read_shard", "safe_cuts", "write_shard"]

# --------------------------------------------------------------------------------------------------------
# The .bin shard format (llm.c's dev/data/data_common.py write_datafile, read by llm.c and modded-nanogpt)
# --------------------------------------------------------------------------------------------------------

HEADER_INTS = 256  # the header is 256 int32: magic, version, token count, then zeros
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) -> token dtype, llm.c's HEADERS_INFO: "gpt-2" stores uint16 ids, "llama-3" (vocabularies
# over 65,536 ids) uint32. Little-endian, as llm.c writes them on every machine it runs on.
SHARD_FORMATS: dict[tuple[int, int], np.dtype] = {
    (20240520, 1): np.dtype("<u2"),
    (20240801, 7): np.dtype("<u4"),
}
MAX_SHARD_TOKENS = 2**31 - 1  # the count is an int32 (llm.c asserts len(toks) < 2**31)


def shard_format(vocab_size: int) -> tuple[int, int, np.dtype]:
    """(magic, version, dtype) of the shards for a vocabulary: uint16 up to 65,536 ids, uint32 above."""
    magic, version = (20240520, 1) if vocab_size <= 1 << 16 else (20240801, 7)
    return magic, version, SHARD_FORMATS[(magic, version)]


def shard_header(n_tokens: int, vocab_size: int) -> bytes:
    """The 1024-byte header of a shard of `n_tokens` tokens."""
    magic, version, _ = shard_format(vocab_size)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = magic, version, n_tokens
    return header.tobytes()


def write_shard(path: str | os.PathLike[str], tokens: np.ndarray, vocab_size: int) -> Path:
    """Write `tokens` as one shard at `path`, atomically (temp file, fsync, rename). Returns the path."""
    path = Path(path)
    _, _, dtype = shard_format(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must be in 0..{vocab_size - 1}, got {tokens.min()}..{tokens.max()}")
    with _atomic_file(path) as f:
        f.write(shard_header(len(tokens), vocab_size))
        f.write(tokens.astype(dtype).tobytes())
    return path


def read_shard(path: str | os.PathLike[str]) -> np.ndarray:
    """The tokens of a `.bin` shard as a read-only numpy memmap (uint16, or uint32 for large vocabularies).

    The header is checked (magic, version, and the token count against the file size); DataError otherwise.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS) if size >= HEADER_BYTES else None
    except FileNotFoundError:
        raise DataError(f"shard not found: {path}; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a .bin token shard") from None
    if header is None:
        raise DataError(f"{path} has {size} bytes, less than a shard's {HEADER_BYTES}-byte header: not a token "
                        "shard, or a truncated one; prepare it again")
    magic, version, n = (int(x) for x in header[:3])
    dtype = SHARD_FORMATS.get((magic, version))
    if dtype is None:
        known = ", ".join(f"magic {m} version {v}" for m, v in SHARD_FORMATS)
        raise DataError(f"{path} is not a token shard this reader knows (magic {magic}, version {version}; "
                        f"known: {known}); prepare it with gptlab prepare or llm.c")
    expected = HEADER_BYTES + n * dtype.itemsize
    if n < 0 or size != expected:
        raise DataError(f"{path}: its header says {n} tokens ({expected} bytes with the header) but the file has "
                        f"{size} bytes; it is truncated or corrupt, prepare it again")
    if n == 0:  # np.memmap cannot map zero bytes
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n,))


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temp file next to `path`, renamed to `path` after a clean exit (fsynced first); removed on error.

    A reader therefore sees no file or the whole file, never a half-written one, even after a kill.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shard is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # directories cannot be opened on some systems (Windows)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def _documents(source: Source, src: str, cfg: PrepareConfig, skipped: list[str]) -> Iterator[Document]:
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


# --------------------------------------------------------------------------------------------------------
# Pieces -> tokens, in worker processes, in order
# --------------------------------------------------------------------------------------------------------


@dataclass
class Piece:
    """A stretch of one document, tokenized on its own."""

    index: int  # position in the stream of pieces: resume cursors count these
    doc: int  # number of the (non-empty) document it belongs to
    first: bool  # the first piece of its document: gets <|endoftext|> in front
    text: str
    nbytes: int  # input bytes it stands for (for the MB/s figure)


def _pieces(documents: Iterable[Document]) -> Iterator[Piece]:
    index = doc = 0
    for document in documents:
        first = True
        for text, nbytes in document:
            if not text and first:  # empty documents are left out (no lone <|endoftext|>)
                continue
            yield Piece(index, doc, first, text, nbytes)
            index, first = index + 1, False
        doc += 0 if first else 1


def _encode(text: str, first: bool, dtype: str) -> np.ndarray:
    """The GPT-2 tokens of a piece (<|endoftext|> first if it starts a document), as a compact array."""
    tok = get_tokenizer("gpt2")
    # encode_ordinary: a literal "<|endoftext|>" inside a document is text, as in llm.c and nanoGPT's prepares;
    # only the separator we put between documents is the special token.
    ids = tok.encoding.encode_ordinary(text)
    out = np.empty(len(ids) + first, dtype=dtype)
    if first:
        out[0] = tok.eot_token
    out[int(first):] = ids
    return out


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[Any]:
    """A pool of `workers` processes, or None for 1 (then pieces are tokenized in this process)."""
    if workers == 1:
        yield None
        return
    # fork: the workers start with the tokenizer the parent already built (spawn would rebuild it in each)
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ctx.Pool(workers, initializer=_worker_init) as pool:  # leaving the block terminates the workers
        yield pool


def _ordered_map(fn: Callable[..., np.ndarray], pieces: Iterator[Piece], pool: Any, workers: int, dtype: str
                 ) -> Iterator[tuple[Piece, np.ndarray]]:
    """(piece, fn(piece.text, piece.first, dtype)) in input order, computed by the pool's processes.

    At most 2 x workers pieces are in flight, so memory is bounded by workers x chunk size, whatever the
    corpus (Pool.imap would read the whole input ahead of the workers).
    """
    if pool is None:
        for p in pieces:
            yield p, fn(p.text, p.first, dtype)
        return
    pending: deque = deque()
    for p in pieces:
        pending.append((p, pool.apply_async(fn, (p.text, p.first, dtype))))
        if len(pending) >= 2 * workers:
            q, result = pending.popleft()
            yield q, result.get()
    while pending:
        q, result = pending.popleft()
        yield q, result.get()


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops the pool)
    # A worker waits on a pipe it holds both ends of, so a parent killed outright (SIGKILL, OOM killer) would
    # leave it waiting forever; on Linux the kernel can end it with the parent instead (PR_SET_PDEATHSIG = 1).
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


# --------------------------------------------------------------------------------------------------------
# Shards and the manifest
# --------------------------------------------------------------------------------------------------------

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "gptlab-prepare-1"


@dataclass
class PrepareConfig:
    """The flags of `gptlab prepare` (the comments are their --help)."""

    shard_tokens: int = 100_000_000  # tokens per shard (llm.c's FineWeb shards hold 100M)
    val_fraction: float | None = None  # None: the first shard is val (llm.c); else this share of documents
    workers: int | None = None  # tokenizer processes; None: one per CPU core
    chunk_chars: int = 1 << 20  # long documents are tokenized in pieces of about this many characters
    skip_bad_files: bool = False  # leave out (and name) files that are not UTF-8 text instead of stopping
    text_field: str = "text"  # the field holding the text in .jsonl, .parquet and datasets
    split: str = "train"  # the split of a Hugging Face dataset
    hub_config: str | None = None  # the configuration (subset) of a hub dataset, e.g. sample-10BT
    progress: bool = True  # a progress bar (MB/s of input, tokens/s) when stderr is a terminal


class _Stream:
    """One sequence of shards (all of them, or the val or the train ones), filled in token order.

    Tokens go straight into the open temp file, so memory holds no shard. `resume` is (piece index, token
    offset in that piece's tokens) where this stream's next shard starts; pieces before it are not tokenized.
    """

    def __init__(self, name: str, out: Path, manifest: dict, cfg: PrepareConfig, vocab_size: int,
                 on_publish: Callable[[], None]) -> None:
        self.name, self.out, self.manifest, self.cfg, self.vocab_size = name, out, manifest, cfg, vocab_size
        self.dtype = shard_format(vocab_size)[2]
        self.on_publish = on_publish
        self.shards = [s for s in manifest["shards"] if s["stream"] == name]
        self.resume = tuple(manifest["resume"].get(name, (0, 0)))
        self.file: BinaryIO | None = None
        self.tmp: Path | None = None
        self.count = 0  # tokens in the open shard

    def next_name(self) -> str:
        k = len(self.shards)
        split = ("val" if k == 0 else "train") if self.name == "all" else self.name
        return f"{split}_{k:06d}.bin"

    def add(self, piece: Piece, ids: np.ndarray) -> None:
        """Append a piece's tokens (those at or after the resume point), publishing every full shard."""
        if piece.index < self.resume[0]:
            return
        offset = self.resume[1] if piece.index == self.resume[0] else 0
        while offset < len(ids):
            if self.file is None:
                fd, tmp = tempfile.mkstemp(dir=self.out, prefix=f".{self.next_name()}.", suffix=".tmp")
                self.file, self.tmp, self.count = os.fdopen(fd, "wb"), Path(tmp), 0
                self.file.write(bytes(HEADER_BYTES))  # the header is filled in when the count is known
            take = min(len(ids) - offset, self.cfg.shard_tokens - self.count)
            self.file.write(ids[offset: offset + take].astype(self.dtype, copy=False).tobytes())
            self.count += take
            offset += take
            if self.count == self.cfg.shard_tokens:
                self.publish(next_start=(piece.index, offset))

    def publish(self, next_start: tuple[int, int]) -> None:
        """Finish the open shard: header, fsync, rename into place, then record it in the manifest."""
        assert self.file is not None and self.tmp is not None
        name = self.next_name()
        self.file.seek(0)
        self.file.write(shard_header(self.count, self.vocab_size))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        os.chmod(self.tmp, 0o644)
        if not (self.out / MANIFEST).exists():  # claim OUT before its first shard (else a kill now leaves a
            self.on_publish()                  # .bin without a manifest, which a rerun refuses as foreign)
        os.replace(self.tmp, self.out / name)
        _test_hook("published")
        # A kill here leaves a shard the manifest does not list; the rerun writes it again, identically.
        entry = {"file": name, "stream": self.name, "split": name.split("_")[0], "tokens": self.count}
        self.shards.append(entry)
        self.manifest["shards"].append(entry)
        self.manifest["resume"][self.name] = list(next_start)
        self.on_publish()

    def discard(self) -> None:
        """Drop the open, unfinished shard (after an error): its temp file is removed, nothing published."""
        if self.file is not None:
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                self.file.close()
            self.file = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _test_hook(event: str) -> None:
    """Test hook: GPTLAB_TEST_KILL_PREPARE=EVENT:N SIGKILLs this process the Nth time EVENT happens, so
    tests/test_prepare.py can kill a run at a chosen point. Unset (always, outside tests): no-op."""
    spec = os.environ.get("GPTLAB_TEST_KILL_PREPARE")
    if spec and spec.split(":")[0] == event:
        count = _HOOK_COUNTS[event] = _HOOK_COUNTS.get(event, 0) + 1
        if count == int(spec.split(":")[1]):
            os.kill(os.getpid(), signal.SIGKILL)


_HOOK_COUNTS: dict[str, int] = {}


def _settings(source: Source, cfg: PrepareConfig, vocab_size: int) -> dict[str, Any]:
    """What the shards depend on: a rerun with other settings would not continue the same shards."""
    return {
        "tokenizer": get_tokenizer("gpt2").to_dict(), "vocab_size": vocab_size,
        "shard_tokens": cfg.shard_tokens, "val_fraction": cfg.val_fraction,
        "chunk_chars": cfg.chunk_chars,  # the pieces (and so the resume points) depend on it, not the tokens
        "text_field": cfg.text_field, "source": source.fingerprint,
    }


def _open_out(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue in `out`: a new one for a new or empty folder, the saved one for the same
    settings. DataError for a folder holding anything else: its files are never touched."""
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            ok = manifest.get("format") == MANIFEST_FORMAT
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{manifest_path} is not a gptlab prepare manifest; pick a new OUT folder")
        old = manifest["settings"]
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            what = ", ".join(f"{k} {_short(old.get(k))} there, {_short(settings[k])} now" for k in diff)
            raise DataError(f"{out} holds shards prepared with other settings or input ({what}); pick a new OUT "
                            "folder, or delete this one to start over")
        return manifest
    if out.is_dir() and any(p for p in out.iterdir() if not _is_temp_shard(p)):
        bins = sorted(p.name for p in out.glob("*.bin"))
        what = f".bin shards ({bins[0]}, ...) that" if bins else "files that"
        raise DataError(f"{out} holds {what} gptlab prepare did not write (no {MANIFEST}); pick a new or empty "
                        "OUT folder")
    return {"format": MANIFEST_FORMAT, "settings": settings, "complete": False, "shards": [], "resume": {},
            "skipped_files": []}


def _is_temp_shard(path: Path) -> bool:
    """A shard a killed run was writing (see _Stream.add): never published, and not needed by the rerun."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and ".bin." in path.name


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, dict) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _save_manifest(out: Path, manifest: dict[str, Any]) -> None:
    with _atomic_file(out / MANIFEST) as f:
        f.write((json.dumps(manifest, indent=1) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------------------------------------
# The whole job
# --------------------------------------------------------------------------------------------------------


def _check(cfg: PrepareConfig) -> None:
    from .options import UsageError

    if not 1 <= cfg.shard_tokens <= MAX_SHARD_TOKENS:
        raise UsageError(f"--shard_tokens must be in 1..{MAX_SHARD_TOKENS:,} (an int32 header), got {cfg.shard_tokens}")
    if cfg.val_fraction is not None and not 0 < cfg.val_fraction < 1:
        raise UsageError(f"--val_fraction must be in (0, 1) or None (the first shard is val), got {cfg.val_fraction}")
    if cfg.workers is not None and cfg.workers < 1:
        raise UsageError(f"--workers must be >= 1 or None (one per core), got {cfg.workers}")
    if cfg.chunk_chars < 64:
        raise UsageError(f"--chunk_chars must be >= 64, got {cfg.chunk_chars}")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(src: str, out: str | os.PathLike[str], cfg: PrepareConfig | None = None) -> dict[str, Any]:
    """Tokenize the corpus `src` into shards in folder `out` (see the module docstring); returns the manifest.

    A rerun continues an interrupted run with the same settings; a complete one is left as it is.
    """
    cfg = cfg or PrepareConfig()
    _check(cfg)
    out = Path(out).expanduser()
    source = find_source(src, cfg)
    if cfg.val_fraction is not None and source.kind == "text":
        from .options import UsageError

        raise UsageError("--val_fraction picks whole documents, and a text file is one document; drop it (the "
                         "first shard is then val) or pass a folder or .jsonl of many documents")
    vocab_size = get_tokenizer("gpt2").vocab_size
    with _exclusive(out):
        manifest = _open_out(out, _settings(source, cfg, vocab_size))
        if not manifest["complete"]:
            _write_shards(src, source, out, cfg, manifest, vocab_size)
    return manifest


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold an flock on folder `out` (created if need be): two runs writing one manifest would corrupt it.

    The kernel drops the lock when the process (and its workers, which share it) dies, so none is ever stale.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"OUT {out} is a file; pass a folder for the shards (a new or empty one)")
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DataError(f"another gptlab prepare is writing into {out}; wait for it to finish, or pick "
                            "another OUT") from None
        yield
    finally:
        os.close(fd)


def _write_shards(src: str, source: Source, out: Path, cfg: PrepareConfig, manifest: dict[str, Any],
                  vocab_size: int) -> None:
    """Tokenize the documents (those after the manifest's resume points) into shards; mark the manifest complete."""
    for stale in filter(_is_temp_shard, out.iterdir()):
        stale.unlink(missing_ok=True)
    # The manifest is first saved with the first shard: a run that stops before (a bad file, a typo in a
    # flag) leaves nothing that would hold a corrected rerun to its settings.

    names = ["all"] if cfg.val_fraction is None else ["val", "train"]
    streams = {n: _Stream(n, out, manifest, cfg, vocab_size, lambda: _save_manifest(out, manifest)) for n in names}
    frac = cfg.val_fraction

    def stream_of(doc: int) -> _Stream:
        if frac is None:
            return streams["all"]
        # document d is val when floor((d + 1) * frac) steps up: exactly frac of them, spread evenly
        return streams["val"] if int((doc + 1) * frac) > int(doc * frac) else streams["train"]

    skipped: list[str] = []
    pieces = _pieces(_documents(source, src, cfg, skipped))
    resume_from = min(s.resume[0] for s in streams.values())
    workers = cfg.workers or _cores()
    dtype = shard_format(vocab_size)[2].str
    start, tokens = time.perf_counter(), 0
    # The pool before the progress bar: forking while tqdm's monitor thread runs could copy a held lock.
    with _worker_pool(workers) as pool, _progress(cfg.progress, source.total_bytes) as bar:
        todo = (p for p in _count_bytes(pieces, bar) if p.index >= stream_of(p.doc).resume[0])
        try:
            for piece, ids in _ordered_map(_encode, todo, pool, workers, dtype):
                stream_of(piece.doc).add(piece, ids)
                _test_hook("piece")
                tokens += len(ids)
                if bar is not None and piece.index >= resume_from:
                    bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9) / 1e6:.2f}M tokens/s",
                                        refresh=False)
            for s in streams.values():
                if s.file is not None and s.count:
                    s.publish(next_start=(sys.maxsize, 0))
        except BaseException:
            for s in streams.values():
                s.discard()
            raise
    if not manifest["shards"]:
        raise DataError(f"{src} holds no text (every document is empty); nothing to write")
    manifest["complete"] = True
    manifest["skipped_files"] = skipped  # this run read the whole input, so it saw every bad file
    _save_manifest(out, manifest)


def _progress(enabled: bool, total: int | None) -> Any:
    """A tqdm bar counting input bytes (it shows MB/s), or a context holding None when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes); leave=False: the summary line replaces it
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="prepare", dynamic_ncols=True,
                disable=None, leave=False)


def _count_bytes(pieces: Iterator[Piece], bar: Any) -> Iterator[Piece]:
    for p in pieces:
        if bar is not None and p.nbytes:
            bar.update(p.nbytes)
        yield p


# --------------------------------------------------------------------------------------------------------
# gptlab prepare
# --------------------------------------------------------------------------------------------------------

HELP = """usage: gptlab prepare SRC OUT [--shard_tokens=N] [--val_fraction=F] [--workers=N] ...

Tokenize a corpus with GPT-2's BPE into token shards in llm.c's .bin format (a 256 x int32 header: magic
20240520, version 1, token count; then uint16 tokens), which llm.c and modded-nanogpt read as they are.
SRC: a text file (one document), a folder of .txt (one document each), .jsonl (a "text" field per line) and
.parquet files (a "text" column; needs pyarrow: pip install 'gptlab[parquet]'), or a Hugging Face dataset
saved with save_to_disk or a hub name, streamed (pip install 'gptlab[datasets]'). Each document is
<|endoftext|> then its tokens. OUT gets val_000000.bin (the first shard, llm.c's convention; or val_*.bin
from --val_fraction of the documents), train_*.bin and manifest.json. Rerun the same command after a kill
or a full disk: finished shards are kept and the rest comes out as an uninterrupted run would write it.
"""


def main(argv: list[str]) -> int:
    """`gptlab prepare SRC OUT [flags]`."""
    from .cli import _parse
    from .options import UsageError

    parsed = _parse(PrepareConfig, argv, {}, HELP)
    if parsed is None:
        return 0
    cfg, positionals = parsed
    if len(positionals) != 2:
        raise UsageError(f"expected SRC and OUT, got {positionals or 'nothing'}; see gptlab prepare --help")
    src, out = positionals
    t0 = time.perf_counter()
    with contextlib.suppress(OSError, ValueError):
        if json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8")).get("complete"):
            print(f"{out} is already complete; nothing to do (delete it to prepare again)")
    manifest = prepare(src, out, cfg)
    shards = manifest["shards"]
    n_val = sum(s["tokens"] for s in shards if s["split"] == "val")
    n_all = sum(s["tokens"] for s in shards)
    print(f"{out}: {len(shards)} shards, {n_all:,} tokens ({n_val:,} val, {n_all - n_val:,} train) in "
          f"{time.perf_counter() - t0:.1f} s")
    for path in manifest["skipped_files"]:
        print(f"  skipped {path}")
    if n_val in (0, n_all):
        print(f"note: {'no' if n_val == 0 else 'every'} token is in val; "
              + ("lower --shard_tokens so that train gets shards too" if n_val else "raise --val_fraction"),
              file=sys.stderr)
    return 0

