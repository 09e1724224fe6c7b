"""`gptlab prepare`: corpus -> llm.c-format token shards (src/gptlab/prepare.py).

What is proven here: pieces cut at the safe points tokenize to the whole document's tokens (against tiktoken on
the whole text, tricky cases and a fuzz); the shards hold <|endoftext|> + document tokens in document order
for every kind of source, the same with 1 or 2 workers; llm.c's write_datafile bytes read back; bad headers,
bad files and foreign OUT folders are refused in one line; a run killed (SIGKILL) or stopped by a full disk
publishes no half shard and its rerun writes exactly the shards of an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from gptlab import cli
from gptlab import corpus as corpus_module
from gptlab import prepare as prep
from gptlab.data import DataError
from gptlab.prepare import PrepareConfig, prepare, read_shard, safe_cuts, write_shard
from gptlab.tokenizer import get_tokenizer

ENC = get_tokenizer("gpt2").encoding
EOT = 50256
TRICKY = (
    "Hello world\nIt's  a   test.\n\n\nDone 123 4567.\r\n\r\nLine\n  indented\n\tTabbed\n"
    "they'll we've I'm you'd 'quoted' don't\n12,345.67\n99 bottles\n\n \n x\n"
    "caf\u00e9 na\u00efve \u4e2d\u6587 emoji \U0001f600\n\u00a0nbsp\n\u3000ideo\n\x1cfs\n\x85nel\n\u2028ls\n"
    "trailing   \nspaces\n!bang\n?q\n\n\n\n\nmany\n"
)


def conf(**kw: object) -> PrepareConfig:
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return PrepareConfig(**kw)


def stream(out: Path, split: str | None = None) -> list[int]:
    """All tokens of OUT's shards in manifest order (of one split if given)."""
    manifest = json.loads((out / "manifest.json").read_text())
    shards = [s for s in manifest["shards"] if split in (None, s["split"])]
    return [int(t) for s in shards for t in read_shard(out / s["file"])]


def docs_tokens(*docs: str) -> list[int]:
    return [t for d in docs for t in [EOT, *ENC.encode_ordinary(d)]]


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# --------------------------------------------------------------------------------------------------------
# Cutting documents
# --------------------------------------------------------------------------------------------------------


def _every_cut(text: str) -> list[int]:
    return [i for i in range(1, len(text)) if corpus_module._newline_cut(text, i) or corpus_module._space_cut(text, i)]


def test_every_safe_cut_keeps_the_whole_texts_tokens() -> None:
    rng = random.Random(0)
    alphabet = ["\n", "\n", " ", "  ", "\r\n", "\t", "a", "Zq", "'s", "'ll", "'", "12", "3", ".", "!?", "\u00e9",
                "\u00a0", "\u3000", "\u4e2d", "\x1c", "\x85", "\u2028", "\U0001f600", "-", "_"]
    texts = [TRICKY] + ["".join(rng.choice(alphabet) for _ in range(60)) for _ in range(300)]
    n_cuts = 0
    for text in texts:
        whole = ENC.encode_ordinary(text)
        cuts = _every_cut(text)
        for i in cuts:
            assert ENC.encode_ordinary(text[:i]) + ENC.encode_ordinary(text[i:]) == whole, (text, i)
        bounds = [0, *cuts, len(text)]  # all the cuts at once, too
        assert [t for a, b in zip(bounds, bounds[1:], strict=False) for t in ENC.encode_ordinary(text[a:b])] == whole
        n_cuts += len(cuts)
    assert n_cuts > 1000
    # The check has teeth: cutting after a blank line (a naive line split) changes the tokens: alone, "\n\n"
    # at the end of the left piece is one token (628), in the whole text two (198, 198).
    text = "Hello\n\nworld"
    assert ENC.encode_ordinary(text[:7]) + ENC.encode_ordinary(text[7:]) != ENC.encode_ordinary(text)
    assert _every_cut(text) == [6]


def test_safe_cuts_bound_the_pieces() -> None:
    text = ("word " * 50 + "\n") * 40
    cuts = safe_cuts(text, 100)
    sizes = np.diff([0, *cuts, len(text)])
    assert len(cuts) > 50 and sizes.max() <= 100
    assert safe_cuts("x" * 500, 100) == []  # nowhere safe to cut: one piece
    assert safe_cuts("x" * 300 + "\nab", 100) == [300]  # the first safe point after the chunk


# --------------------------------------------------------------------------------------------------------
# Sources -> shards
# --------------------------------------------------------------------------------------------------------


def test_text_file_shards_hold_the_whole_documents_tokens_with_1_or_2_workers(tmp_path: Path) -> None:
    # ~40 KB of tricky text; chunk_chars=64 cuts it into hundreds of pieces, and 64-byte reads split
    # multi-byte characters across blocks.
    text = TRICKY * 40
    (tmp_path / "corpus.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())  # a BOM is not part of the text
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        prepare(str(tmp_path / "corpus.txt"), out, conf(workers=workers, chunk_chars=64, shard_tokens=1000))
        assert stream(out) == docs_tokens(text)
        outs.append(files_of(out))
    assert outs[0] == outs[1]
    shards = json.loads(outs[0]["manifest.json"])["shards"]
    assert [s["file"] for s in shards[:2]] == ["val_000000.bin", "train_000001.bin"]  # llm.c's names
    assert [s["tokens"] for s in shards[:-1]] == [1000] * (len(shards) - 1)


def test_folder_documents_in_path_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "b.txt").write_text("Second file.\n")
    (src / "c.txt").write_text("Third, at the top level.")
    (src / "a.jsonl").write_text('{"text": "row one"}\n\n{"text": "", "id": 2}\n{"text": "row\\nthree"}\n')
    (src / "notes.md").write_text("not a corpus file")
    (src / ".hidden.txt").write_text("hidden")
    prepare(str(src), tmp_path / "out", conf())
    # a.jsonl, c.txt, sub/b.txt (sorted paths); the blank line and the empty document are left out
    assert stream(tmp_path / "out") == docs_tokens("row one", "row\nthree", "Third, at the top level.",
                                                   "Second file.\n")


def test_val_fraction_sends_evenly_spread_documents_to_val(tmp_path: Path) -> None:
    docs = [f"Document number {i}." for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    out = tmp_path / "out"
    prepare(str(tmp_path / "d.jsonl"), out, conf(val_fraction=0.25, text_field="body", shard_tokens=7, workers=2))
    val = [3, 7, 11, 15, 19]
    assert stream(out, "val") == docs_tokens(*(docs[i] for i in val))
    assert stream(out, "train") == docs_tokens(*(d for i, d in enumerate(docs) if i not in val))
    assert {p.name for p in out.glob("*.bin")} >= {"val_000000.bin", "train_000000.bin", "train_000001.bin"}


def test_parquet_files(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["first row", None, "second\nrow"], "n": [1, 2, 3]}), tmp_path / "p.parquet")
    prepare(str(tmp_path / "p.parquet"), tmp_path / "out", conf())
    assert stream(tmp_path / "out") == docs_tokens("first row", "second\nrow")


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    util = corpus_module.importlib.util
    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name: None if name == "pyarrow" else real(name))
    assert cli.main(["prepare", str(tmp_path / "p.parquet"), str(tmp_path / "out"), "--progress=False"]) == 2
    assert "needs the pyarrow package: pip install 'gptlab[parquet]'" in capsys.readouterr().err


def test_saved_hugging_face_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["alpha beta", "gamma\n\ndelta", "epsilon"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "test": datasets.Dataset.from_dict({"text": ["held out"]})}).save_to_disk(tmp_path / "ds")
    prepare(str(tmp_path / "ds"), tmp_path / "out", conf())
    assert stream(tmp_path / "out") == docs_tokens(*rows["text"])
    prepare(str(tmp_path / "ds"), tmp_path / "out2", conf(split="test"))
    assert stream(tmp_path / "out2") == docs_tokens("held out")
    with pytest.raises(DataError, match="no split 'dev'"):
        prepare(str(tmp_path / "ds"), tmp_path / "out3", conf(split="dev"))
    with pytest.raises(DataError, match="has no 'body' column"):
        prepare(str(tmp_path / "ds"), tmp_path / "out4", conf(text_field="body"))
    with pytest.raises(DataError, match="other settings or input"):  # another split is another input
        prepare(str(tmp_path / "ds"), tmp_path / "out", conf(split="test"))


# --------------------------------------------------------------------------------------------------------
# The .bin format
# --------------------------------------------------------------------------------------------------------


def llm_c_write_datafile(filename: Path, toks: list[int], model_desc: str = "gpt-2") -> None:
    """llm.c's dev/data/data_common.py write_datafile, as it is there (minus its print)."""
    info = {"gpt-2": {"magic": 20240520, "version": 1, "token_dtype": np.uint16},
            "llama-3": {"magic": 20240801, "version": 7, "token_dtype": np.uint32}}[model_desc]
    header = np.zeros(256, dtype=np.int32)
    header[0] = info["magic"]
    header[1] = info["version"]
    header[2] = len(toks)
    toks_np = np.array(toks, dtype=info["token_dtype"])
    with open(filename, "wb") as f:
        f.write(header.tobytes())
        f.write(toks_np.tobytes())


@pytest.mark.parametrize(("model_desc", "vocab_size", "dtype"), [("gpt-2", 50257, np.uint16),
                                                                  ("llama-3", 128256, np.uint32)])
def test_llm_c_shards_round_trip(tmp_path: Path, model_desc: str, vocab_size: int, dtype: type) -> None:
    toks = [EOT, 15496, 995, 0, vocab_size - 1, 7]
    llm_c_write_datafile(tmp_path / "llmc.bin", toks, model_desc)
    data = read_shard(tmp_path / "llmc.bin")
    assert data.dtype == dtype and data.tolist() == toks
    with pytest.raises(ValueError, match="read-only"):
        data[0] = 1
    write_shard(tmp_path / "ours.bin", np.array(toks), vocab_size)
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "llmc.bin").read_bytes()


def test_read_shard_checks_the_header(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    llm_c_write_datafile(good, list(range(10)))
    raw = good.read_bytes()
    cases = {
        "magic.bin": (np.int32(123).tobytes() + raw[4:], "magic 123, version 1"),
        "version.bin": (raw[:4] + np.int32(2).tobytes() + raw[8:], "magic 20240520, version 2"),
        "truncated.bin": (raw[:-2], "header says 10 tokens (1044 bytes with the header) but the file has 1042"),
        "short.bin": (raw[:100], "100 bytes, less than a shard's 1024-byte header"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_shard(tmp_path / name)
    with pytest.raises(DataError, match="shard not found"):
        read_shard(tmp_path / "nope.bin")


# --------------------------------------------------------------------------------------------------------
# Kills, full disks, reruns
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of 3 text files (~27 KB) and its shards from one uninterrupted run."""
    src = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (src / f"part{i}.txt").write_text(f"Part {i}.\n" + TRICKY * 40)
    ref = src.parent / f"{src.name}-ref"
    prepare(str(src), ref, conf(shard_tokens=1000, chunk_chars=512))
    return src, ref


def test_killed_runs_resume_to_the_shards_of_an_uninterrupted_run(
        corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, ref = corpus
    n_shards = len(list(ref.glob("*.bin")))
    assert n_shards >= 6
    # SIGKILL (nothing cleans up) right after a shard's rename, before the manifest lists it (the first shard
    # and a later one), and in the middle of a shard. The run is a forked copy of this process (a subprocess
    # would spend seconds importing torch).
    fork = multiprocessing.get_context("fork")
    for i, kill_at in enumerate(["published:1", "published:3", "piece:15"]):
        out = tmp_path / f"out{i}"
        cfg = conf(shard_tokens=1000, chunk_chars=512, workers=2)
        monkeypatch.setenv("GPTLAB_TEST_KILL_PREPARE", kill_at)
        run = fork.Process(target=prepare, args=(str(src), out, cfg))
        run.start()
        run.join(timeout=120)
        assert run.exitcode == -signal.SIGKILL
        monkeypatch.delenv("GPTLAB_TEST_KILL_PREPARE")
        manifest = json.loads((out / "manifest.json").read_text())
        assert len(manifest["shards"]) < n_shards and not manifest["complete"]
        # killed mid-shard, the shard being written is a temp file, never a published .bin
        assert len(list(out.glob(".*.bin.*.tmp"))) == (kill_at.startswith("piece"))
        for shard in out.glob("*.bin"):  # whatever was published is whole
            assert read_shard(shard).tolist() == read_shard(ref / shard.name).tolist()
        prepare(str(src), out, cfg)
        assert files_of(out) == files_of(ref)


def test_full_disk_publishes_no_half_shard_and_the_rerun_completes(
        corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    src, ref = corpus
    out = tmp_path / "out"
    calls = {"n": 0}

    def disk_fills(event: str) -> None:
        calls["n"] += event == "piece"
        if calls["n"] == 20:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prep, "_test_hook", disk_fills)
    argv = ["prepare", str(src), str(out), "--shard_tokens=1000", "--chunk_chars=512", "--workers=2",
            "--progress=False"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "gptlab: error: [Errno 28] No space left on device\n"
    listed = {s["file"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert listed and {p.name for p in out.glob("*.bin")} == listed  # no half shard, no temp file
    assert not list(out.glob(".*"))
    monkeypatch.undo()
    assert cli.main(argv) == 0
    assert files_of(out) == files_of(ref)
    assert cli.main(argv) == 0 and "already complete" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing of the user's touched
# --------------------------------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    rc = cli.main(["prepare", *argv, "--progress=False"])
    err = capsys.readouterr().err
    return rc, err


def test_bad_input_is_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "good.txt").write_text("Some text.\n")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("Good file.\n")
    (tmp_path / "mixed" / "b.txt").write_bytes("Sch\u00f6n\n".encode("latin-1"))
    (tmp_path / "mixed" / "c.txt").write_bytes(b"bin\0ary")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    cases = [
        ((str(tmp_path / "empty"), str(tmp_path / "o1")), "holds no .txt, .jsonl or .parquet files"),
        ((str(tmp_path / "nope"), str(tmp_path / "o2")), "SRC not found"),
        ((str(tmp_path / "mixed"), str(tmp_path / "o3")),
         f"{tmp_path / 'mixed' / 'b.txt'} is not valid UTF-8 (byte 0xf6 at byte offset 3); convert or remove it, "
         "or pass --skip_bad_files=True"),
        ((str(tmp_path / "bad.jsonl"), str(tmp_path / "o4")), "bad.jsonl line 2 has no 'text' string field"),
        ((str(tmp_path / "good.txt"), str(tmp_path / "o5"), "--shard_tokens=0"), "--shard_tokens must be in"),
        ((str(tmp_path / "good.txt"), str(tmp_path / "o6"), "--val_fraction=0.1"), "a text file is one document"),
        ((str(tmp_path / "good.txt"),), "expected SRC and OUT"),
        ((str(tmp_path / "good.txt"), str(tmp_path / "good.txt")), "is a file; pass a folder"),
    ]
    for argv, message in cases:
        rc, err = run_cli(capsys, *argv)
        assert rc == 2 and err.startswith("gptlab: error: ") and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, err)
    # nothing was published before the bad file, so nothing holds the corrected rerun to the old input
    assert list((tmp_path / "o3").iterdir()) == []
    (tmp_path / "mixed" / "b.txt").write_text("Sch\u00f6n\n")
    (tmp_path / "mixed" / "c.txt").unlink()
    assert run_cli(capsys, str(tmp_path / "mixed"), str(tmp_path / "o3"))[0] == 0
    assert stream(tmp_path / "o3") == docs_tokens("Good file.\n", "Sch\u00f6n\n")
    (tmp_path / "mixed" / "b.txt").write_bytes("Sch\u00f6n\n".encode("latin-1"))
    (tmp_path / "mixed" / "c.txt").write_bytes(b"bin\0ary")
    # --skip_bad_files: both bad files are named and left out whole
    rc = cli.main(["prepare", str(tmp_path / "mixed"), str(tmp_path / "o7"), "--skip_bad_files", "--progress=False"])
    captured = capsys.readouterr()
    assert rc == 0 and stream(tmp_path / "o7") == docs_tokens("Good file.\n")
    assert "b.txt is not valid UTF-8" in captured.err
    assert "c.txt looks binary (NUL byte at byte offset 3)" in captured.err
    assert len(json.loads((tmp_path / "o7" / "manifest.json").read_text())["skipped_files"]) == 2


def test_out_of_other_settings_or_not_ours_is_refused_untouched(tmp_path: Path, capsys: pytest.CaptureFixture
                                                                 ) -> None:
    src = tmp_path / "in.txt"
    src.write_text("A small corpus.\n" * 20)
    out = tmp_path / "out"
    assert run_cli(capsys, str(src), str(out), "--shard_tokens=50")[0] == 0
    before = files_of(out)
    rc, err = run_cli(capsys, str(src), str(out), "--shard_tokens=60")
    assert rc == 2 and "shard_tokens 50 there, 60 now" in err and files_of(out) == before
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["settings"]["tokenizer"] = {"type": "char", "chars": "abc"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    rc, err = run_cli(capsys, str(src), str(out), "--shard_tokens=50")
    assert rc == 2 and "other settings or input (tokenizer" in err
    src.write_text("A changed corpus.\n" * 20)
    (tmp_path / "out2").mkdir()
    assert run_cli(capsys, str(src), str(tmp_path / "out2"))[0] == 0
    src.write_text("Changed again, longer.\n" * 20)
    rc, err = run_cli(capsys, str(src), str(tmp_path / "out2"))
    assert rc == 2 and "other settings or input (source" in err
    # shards from elsewhere (llm.c) and other files: never written over
    foreign = tmp_path / "fineweb10B"
    foreign.mkdir()
    llm_c_write_datafile(foreign / "fineweb_val_000000.bin", [1, 2, 3])
    rc, err = run_cli(capsys, str(src), str(foreign))
    assert rc == 2 and "holds .bin shards (fineweb_val_000000.bin, ...) that gptlab prepare did not write" in err
    assert [p.name for p in foreign.iterdir()] == ["fineweb_val_000000.bin"]


def test_a_second_prepare_into_the_same_out_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    monkeypatch.setattr(prep, "LOCK_GRACE_S", 0.2)
    (tmp_path / "in.txt").write_text("Some text.\n")
    (tmp_path / "out").mkdir()
    fd = os.open(tmp_path / "out", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running prepare holds it
        with pytest.raises(DataError, match="another gptlab prepare is writing into"):
            prepare(str(tmp_path / "in.txt"), tmp_path / "out", conf())
    finally:
        os.close(fd)
    prepare(str(tmp_path / "in.txt"), tmp_path / "out", conf())
    assert stream(tmp_path / "out") == docs_tokens("Some text.\n")


def test_a_rerun_waits_for_a_killed_runs_workers_to_let_go(tmp_path: Path) -> None:
    # The workers of a run killed outright hold its lock for the moments the kernel takes to end them: a rerun
    # started at once waits for them instead of refusing. Here a forked process holds the lock for 0.5 s.
    import fcntl

    (tmp_path / "in.txt").write_text("Some text.\n")
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    holder = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0.5,))
    holder.start()  # it shares the lock, as a pool worker does
    os.close(fd)  # this process lets go; the holder keeps it until it exits
    assert prep.LOCK_GRACE_S > 0.5
    t0 = time.monotonic()
    prepare(str(tmp_path / "in.txt"), out, conf())
    assert time.monotonic() - t0 >= 0.3  # it did wait for the holder
    holder.join()
    assert stream(out) == docs_tokens("Some text.\n")


def test_a_held_lock_is_refused_after_the_grace_wait_without_spinning(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # While another prepare holds the folder, a run waits LOCK_GRACE_S for it (a killed run's workers let go within
    # moments), retrying now and then rather than spinning a core, and then refuses.
    import fcntl

    monkeypatch.setattr(prep, "LOCK_GRACE_S", 0.5)
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running prepare holds it
        wall, cpu = time.monotonic(), time.process_time()
        with pytest.raises(DataError, match="another gptlab prepare is writing into"), prep._exclusive(out):
            pass
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    finally:
        os.close(fd)
    assert 0.5 <= wall < 2.5, wall  # LOCK_GRACE_S, not less, and not the default 3 s
    assert cpu < 0.25, cpu  # asleep between tries: a busy retry would burn the whole wait
