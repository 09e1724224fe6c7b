"""llm.c's `.bin` token shards: a 256 x int32 header (magic, version, token count), then the tokens.

The format of llm.c's dev/data/data_common.py `write_datafile`, read by llm.c and modded-nanogpt, so shards
downloaded for either work here unchanged. `gptlab prepare` writes them; `read_shard` maps one read-only, and
`ShardedTokens` reads a split's shards as one sequence for training (`--data.shards`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .data import DataError, TokenData
from .tokenizer import get_tokenizer

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
    with atomic_file(path) as f:
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
def atomic_file(path: Path) -> Iterator[BinaryIO]:
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
# Shards as one token sequence per split, for training
# --------------------------------------------------------------------------------------------------------


class ShardedTokens:
    """Several shards read as one sequence of tokens, without copying: `tokens[idx]` for an integer array idx
    (the trainer's (B, T+1) window offsets) gathers from whichever shard holds each position, so a window may
    cross from one shard into the next, as in one long file."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.shards = [read_shard(p) for p in paths]
        sizes = [len(s) for s in self.shards]
        self.starts = np.cumsum([0, *sizes])  # shard k holds positions starts[k] .. starts[k+1] - 1
        dtypes = {s.dtype for s in self.shards}
        if len(dtypes) > 1:  # uint16 and uint32 shards: another tokenizer's shards mixed in
            raise DataError(f"{paths[0].parent}: the shards mix token widths ({', '.join(map(str, dtypes))}); "
                            "give the shards of one tokenizer")
        self.dtype = dtypes.pop() if dtypes else np.dtype("<u2")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, idx: np.ndarray | slice) -> np.ndarray:
        if isinstance(idx, slice):  # eval's ids[:n], ids[1:]: shard by shard, no index array over the split
            start, stop, step = idx.indices(len(self))
            parts = [s[max(start - a, 0) : max(stop - a, 0)] for s, a in zip(self.shards, self.starts, strict=False)]
            whole = np.concatenate(parts) if parts else np.zeros(0, self.dtype)
            return whole[::step]
        idx = np.asarray(idx)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty(idx.shape, dtype=self.dtype)
        for k in np.unique(which):  # a batch touches one or two shards
            here = which == k
            out[here] = self.shards[k][idx[here] - self.starts[k]]
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """All the tokens in memory (for `gptlab eval` over a val split): the shards one after another."""
        whole = np.concatenate(self.shards) if self.shards else np.zeros(0, self.dtype)
        return whole if dtype is None else whole.astype(dtype)


def split_shards(spec: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """{"train": [...], "val": [...]} from a glob ("data/fineweb_*.bin") or a folder of shards (a `gptlab
    prepare` OUT): a file whose name has "val" as a word in it (fineweb_val_000000.bin, val_000000.bin) is val
    (llm.c's and modded-nanogpt's names, and prepare's), the others train; each split in name order."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.bin"))
    else:
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec)))
    if not files:
        raise DataError(f"--data.shards={spec}: no .bin shards there; pass a folder of shards or a glob such as "
                        "'data/fineweb_*.bin' (quoted)")
    is_val = [re.search(r"(?:^|[_\-.])val(?:[_\-.\d]|$)", f.name) is not None for f in files]  # not "interval"
    splits = {"train": [f for f, v in zip(files, is_val, strict=True) if not v],
              "val": [f for f, v in zip(files, is_val, strict=True) if v]}
    for split, paths in splits.items():
        if not paths:
            raise DataError(f"--data.shards={spec}: no {split} shard among {len(files)} files (val shards have 'val' "
                            "in their name, as llm.c and gptlab prepare name them)")
    return splits


def shard_dataset(spec: str | os.PathLike[str]) -> TokenData:
    """The train and val splits of a set of GPT-2 token shards (see split_shards), memory-mapped, as the
    trainer's TokenData: batches are drawn from them exactly as from a tokenized text file."""
    splits = split_shards(spec)
    train, val = ShardedTokens(splits["train"]), ShardedTokens(splits["val"])
    tokenizer = get_tokenizer("gpt2")
    for tokens in (val, train):
        if tokens.dtype != np.dtype("<u2"):
            raise DataError(f"{tokens.paths[0]} holds uint32 tokens (a vocabulary over 65,536 ids): shards of another "
                            "tokenizer than GPT-2's, which gptlab trains on")
        # The first shard of each split, as a cheap check (reading every shard would read the whole corpus).
        first = tokens.shards[0]
        if len(first) and int(first.max()) >= tokenizer.vocab_size:
            raise DataError(f"{tokens.paths[0]} holds token id {int(first.max())}, past GPT-2's vocabulary "
                            f"({tokenizer.vocab_size}): shards of another tokenizer")
    folder = Path(spec).expanduser()
    where = folder if folder.is_dir() else train.paths[0].parent
    return TokenData(train=train, val=val, tokenizer=tokenizer, path=where)
