"""`gptlab prepare SRC OUT`: a text corpus -> GPT-2 token shards in llm.c's `.bin` format, in bounded memory.

The pipeline (stages 1 and 2's cutting in corpus.py, the shard format in shards.py):

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

import contextlib
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

from .corpus import Document, Source, documents, find_source, safe_cuts
from .data import DataError
from .shards import (
    HEADER_BYTES,
    MAX_SHARD_TOKENS,
    atomic_file,
    read_shard,
    shard_format,
    shard_header,
    write_shard,
)
from .tokenizer import get_tokenizer

__all__ = ["PrepareConfig", "main", "prepare", "read_shard", "safe_cuts", "write_shard"]

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
    with atomic_file(out / MANIFEST) as f:
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


# A run killed outright leaves its pool workers holding its lock (forked, they share it) until the kernel ends them
# too (_worker_init): a rerun started at once waits this long for them rather than calling them another prepare.
LOCK_GRACE_S = 3.0


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
        deadline = time.monotonic() + LOCK_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise DataError(f"another gptlab prepare is writing into {out}; wait for it to finish, or pick "
                                    "another OUT") from None
                time.sleep(0.05)
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
    pieces = _pieces(documents(source, src, cfg, skipped))
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

