"""llm.c's `.bin` token shards: a 256 x int32 header (magic, version, token count), then the tokens.

The format of llm.c's dev/data/data_common.py `write_datafile`, read by llm.c and modded-nanogpt, so shards
downloaded for either work here unchanged. `gptlab prepare` writes them; `read_shard` maps one read-only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .data import DataError

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
