"""The gptlab command: flag parsing (options.py), config files, help, and sample / eval / plot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab import autotune, cli, hardware
from gptlab import train as T
from gptlab.config import GPTConfig
from gptlab.data import shakespeare_text
from gptlab.options import UsageError, model_config_from_flags


def parse(*argv: str) -> T.TrainConfig:
    return T.parse_train_args(list(argv))


# --------------------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------------------


DEMO_MODEL = {"preset": "baby", "block_size": 256, "pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}


def test_defaults_are_the_demo() -> None:
    cfg = parse()
    assert cfg.model == DEMO_MODEL and cfg.data.path is None
    assert cfg.system.work_dir == str(Path("out") / "run")
    assert parse("--preset=demo").system.work_dir == str(Path("out") / "demo")


def test_chargpt_fork_flags_work_verbatim() -> None:
    cfg = parse(
        "--data.block_size=128", "--system.work_dir=out/x", "--model.n_query_head=6", "--model.n_kv_head=3",
        "--model.rope=True", "--trainer.max_iters=200", "--trainer.device=cpu", "--model.n_embd=192",
    )
    assert cfg.model == {**DEMO_MODEL, "block_size": 128, "n_head": 6, "n_kv_head": 3, "pos_emb": "rope",
                         "n_embd": 192}
    assert cfg.system.work_dir == "out/x" and cfg.trainer.max_iters == 200 and cfg.trainer.device == "cpu"
    assert parse("--model.pretrained_folder=out/prev").init == "out/prev"
    assert parse("--model.rope=False").model["pos_emb"] == "learned"
    assert parse("--model.model_type=gpt-mini").model == {"preset": "gpt-mini"}


@pytest.mark.parametrize("text, value", [("True", True), ("true", True), ("1", True), ("False", False),
                                         ("false", False), ("0", False)])
def test_bools(text: str, value: bool) -> None:
    assert parse(f"--trainer.compile={text}").trainer.compile is value


def test_value_forms_and_types() -> None:
    cfg = parse("--trainer.max_iters", "2e3", "--trainer.compile", "--model.window=None", "--trainer.min_lr=null",
                "--trainer.learning_rate=3e-4", "--model.norm=rmsnorm", "--model.mlp=swiglu", "--model.window=64")
    assert cfg.trainer.max_iters == 2000 and cfg.trainer.compile is True and cfg.trainer.min_lr is None
    assert cfg.trainer.learning_rate == 3e-4
    assert cfg.model["window"] == 64 and cfg.model["norm"] == "rmsnorm" and cfg.model["mlp"] == "swiglu"
    assert parse("--trainer.max_iters=5", "--trainer.max_iters=7").trainer.max_iters == 7  # last wins


@pytest.mark.parametrize("argv, message", [
    (["--trainer.max_iter=5"], "unknown flag --trainer.max_iter; did you mean --trainer.max_iters?"),
    (["--modle.n_layer=5"], "unknown flag --modle.n_layer"),
    (["--trainer.max_iters=ten"], "--trainer.max_iters expects an integer, got 'ten'"),
    (["--trainer.compile=maybe"], "--trainer.compile expects a boolean"),
    (["--trainer.learning_rate=fast"], "--trainer.learning_rate expects a number"),
    (["--trainer.max_iters=None"], "--trainer.max_iters expects an integer, got 'None'"),
    (["--trainer.top_k=None"], "unknown flag --trainer.top_k"),
    (["--data.tokenizer=bpe"], "--data.tokenizer must be one of char, gpt2"),
    (["--trainer.strategy=zero3"], "--trainer.strategy must be one of ddp, fsdp"),
    (["--trainer.max_iters=0"], "--trainer.max_iters must be >= 1"),
    (["--trainer.min_lr=1"], "--trainer.min_lr must be in [0, learning_rate"),
    (["--trainer.min_lr=-1e-4"], "--trainer.min_lr must be in [0, learning_rate"),
    (["--trainer.grad_accum=0"], "--trainer.grad_accum must be >= 1"),
    (["--trainer.warmup_iters=-1"], "--trainer.warmup_iters must be >= 0"),
    (["--trainer.learning_rate=0"], "--trainer.learning_rate must be > 0"),
    (["--trainer.lr_decay_iters=0"], "--trainer.lr_decay_iters must be >= 1"),
    (["--trainer.beta2=1"], "--trainer.beta2 must be in [0, 1)"),  # Adam's bias correction would divide by 0
    (["--trainer.weight_decay=-0.1"], "--trainer.weight_decay must be >= 0"),
    (["--trainer.grad_clip=-1"], "--trainer.grad_clip must be >= 0"),
    (["--preset=huge"], "unknown run preset 'huge'"),
    (["--trainer.max_iters"], "--trainer.max_iters needs a value"),
    (["stray"], "unexpected argument 'stray'"),
    (["--init=gpt2", "--model.preset=gpt2"], "--model.preset and --init both pick a model"),
])
def test_bad_flags_are_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse(*argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_model_preset_replaces_the_default_model() -> None:
    assert parse("--model.preset=gpt2").model == {"preset": "gpt2"}  # not the demo's block_size 256
    assert parse("--model.preset=gpt2", "--data.block_size=64").model == {"preset": "gpt2", "block_size": 64}
    assert parse("--preset=baby").model == {"preset": "baby", "block_size": 64, "dropout": 0.0, "bias": False}
    assert parse("--init=out/prev").model == {}


def test_config_files_are_parsed_and_flags_override(tmp_path: Path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: baby\ntrainer:\n  max_iters: 300\n  learning_rate: 1e-3\nmodel:\n  n_layer: 2\n"
                         "data.block_size: 32\n")
    cfg = parse(f"--config={yaml_file}", "--trainer.max_iters=400")
    assert cfg.preset == "baby" and cfg.trainer.max_iters == 400
    assert cfg.trainer.learning_rate == 1e-3  # YAML reads 1e-3 as a string; it is still a float here
    assert cfg.model["n_layer"] == 2 and cfg.model["block_size"] == 32
    assert cfg.trainer.batch_size == 12  # from the baby preset, under the file
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"trainer.max_iters": 9, "model": {"rope": True}}))
    cfg = parse(str(json_file))  # a positional config file, nanoGPT style
    assert cfg.trainer.max_iters == 9 and cfg.model["pos_emb"] == "rope"


@pytest.mark.parametrize("name, content, message", [
    ("x.py", "max_iters = 5", "Python config files are not executed"),
    ("x.yaml", "trainer: [1, 2", "is not valid YAML"),
    ("x.json", "{", "is not valid JSON"),
    ("x.yaml", "- 1\n- 2\n", "must hold a mapping"),
    ("x.yaml", "trainer:\n  max_iters: lots\n", "--trainer.max_iters expects an integer, got 'lots' (in "),
    ("x.yaml", "trainer:\n  speed: 5\n", "unknown flag --trainer.speed"),
])
def test_bad_config_files(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UsageError) as e:
        parse(f"--config={path}")
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UsageError, match="config file not found"):
        parse(f"--config={tmp_path / 'missing.yaml'}")


def test_help_lists_every_field_with_its_default(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    demo = {k: v for k, v in DEMO_MODEL.items() if k != "preset"}
    for name, value in GPTConfig.from_preset("baby", **demo).to_dict().items():
        if name != "vocab_size":
            assert f"--model.{name}=" in out and f"(default: {value})" in out, name
    for section in ("data", "trainer", "system"):
        for field in T.TRAIN_OPTIONS:
            if field.startswith(section + "."):
                assert f"--{field}=" in out
    assert "(default: 1000)" in out and "--model.n_query_head" in out and "demo" in out


def test_model_config_from_flags(tmp_path: Path) -> None:
    assert model_config_from_flags(["--model.preset=gpt2"]) == GPTConfig.from_preset("gpt2")
    c = model_config_from_flags(["--model.preset=gpt2", "--model.n_query_head=12", "--model.n_kv_head=4",
                                 "--model.rope=True", "--model.window=128"])
    assert (c.n_head, c.n_kv_head, c.pos_emb, c.window, c.block_size) == (12, 4, "rope", 128, 1024)
    assert model_config_from_flags([]) == GPTConfig.from_preset(
        "baby", block_size=256, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False
    )
    assert model_config_from_flags(["--preset=baby"]).block_size == 64
    assert model_config_from_flags(["--init=gpt2-medium"]) == GPTConfig.from_preset("gpt2-medium")
    # A checkpoint directory, positional or as --model.pretrained_folder; model flags change it.
    GPTConfig.from_preset("tiny").save(tmp_path / "bare.json")
    (tmp_path / "ck").mkdir()
    config = {"model_type": "gptlab", "gptlab": GPTConfig.from_preset("tiny").to_dict()}
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    assert model_config_from_flags([str(tmp_path / "ck")]) == GPTConfig.from_preset("tiny")
    changed = model_config_from_flags([f"--model.pretrained_folder={tmp_path / 'ck'}", "--model.window=8"])
    assert changed == GPTConfig.from_preset("tiny", window=8)
    with pytest.raises(UsageError, match="n_embd .* must be divisible by n_head"):
        model_config_from_flags(["--model.n_head=5"])
    with pytest.raises(ValueError, match="holds no checkpoint"):
        model_config_from_flags([str(tmp_path)])


# --------------------------------------------------------------------------------------------------------
# The command table and error handling
# --------------------------------------------------------------------------------------------------------


def test_command_table(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(cli.COMMANDS) == {"train", "sample", "eval", "plot", "info", "compare", "convert", "export", "runs",
                                 "attention", "prepare"}
    assert cli.main(["--help"]) == 0 and "commands:" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    monkeypatch.setitem(cli.COMMANDS, "later", ("gptlab.not_written_yet", "main", "a future command"))
    assert cli.main(["later"]) == 2
    assert capsys.readouterr().err == "gptlab: error: gptlab later is not available in this version\n"


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.")
    cases = [
        (["train", "--model.n_head=5"], "must be divisible by n_head"),
        (["train", f"--data.path={empty}", f"--data.cache_dir={tmp_path}", f"--system.work_dir={tmp_path / 'a'}"],
         "data file is empty"),
        (["train", f"--data.path={short}", f"--data.cache_dir={tmp_path}", f"--system.work_dir={tmp_path / 'b'}"],
         "is too short for block_size=256"),
        (["sample", str(tmp_path)], "holds no checkpoint"),
    ]
    for argv, message in cases:
        out = subprocess.run([sys.executable, "-m", "gptlab", *argv], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr.startswith("gptlab: error: ") and out.stderr.count("\n") == 1, out.stderr
        assert message in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------------------------------------
# sample, eval, plot on a real (tiny) run
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    text = root / "input.txt"
    text.write_text(shakespeare_text()[:20_000], encoding="utf-8")
    argv = ["--preset=tiny", f"--data.path={text}", f"--data.cache_dir={root / 'cache'}", "--trainer.device=cpu",
            "--trainer.max_iters=6", "--trainer.eval_interval=3", "--trainer.sample_tokens=0"]
    assert T.main([*argv, f"--system.work_dir={root / 'a'}"]) == 0
    assert T.main([*argv, f"--system.work_dir={root / 'b'}", "--model.rope=True"]) == 0
    return root


def test_sample(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["sample", str(run / "a"), "--prompt=ROMEO:", "--num_samples=3", "--max_new_tokens=10"]) == 0
    samples = capsys.readouterr().out.strip().split("\n" + "-" * 40 + "\n")
    assert len(samples) == 3 and all(s.startswith("ROMEO:") for s in samples)
    # Same seed, same text; nanoGPT's flag names work too.
    argv = ["--prompt=To be", "--max_new_tokens=8", "--seed=3", "--checkpoint=last"]
    cli.main(["sample", str(run / "a"), *argv])
    first = capsys.readouterr().out
    cli.main(["sample", f"--out_dir={run / 'a'}", "--start=To be", "--max_new_tokens=8", "--seed=3",
              "--checkpoint=last"])
    assert capsys.readouterr().out == first
    # gptlab train's flag for the run directory names it here too.
    cli.main(["sample", f"--system.work_dir={run / 'a'}", *argv])
    assert capsys.readouterr().out == first
    # RoPE models have no position table: they can generate past block_size.
    assert cli.main(["sample", str(run / "b"), "--max_new_tokens=50", "--temperature=0"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--temperature=-1"], "--temperature must be >= 0"),
    (["--top_p=0"], "--top_p must be in (0, 1]"),
    (["--top_p=1.5"], "--top_p must be in (0, 1]"),
    (["--top_k=0"], "--top_k must be >= 1"),
    (["--max_new_tokens=40"], "past block_size=32"),
    (["--prompt=Romeü"], "--prompt: character(s) 'ü' not in the char tokenizer's vocabulary"),
    (["--bogus=1"], "unknown flag --bogus"),
    (["--device=tpu"], "--device: unknown device 'tpu'"),  # names sample's own flag, not the trainer's
])
def test_sample_errors(run: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert cli.main(["sample", str(run / "a"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error: ") and message in err and err.count("\n") == 1


def test_sample_a_hugging_face_gpt2_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gptlab.model import GPT

    GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)).save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"
    assert cli.main(["sample", str(tmp_path / "hf"), "--prompt=Hello", "--max_new_tokens=5"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_eval(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["eval", str(run / "a"), "--json"]) == 0
    on_val = json.loads(capsys.readouterr().out)
    assert on_val["tokens"] == 1999 and on_val["chars"] == 1999  # the last 10% of 20,000 characters, minus one
    assert on_val["perplexity"] == pytest.approx(math.exp(on_val["loss"]))
    assert on_val["bits_per_char"] == pytest.approx(on_val["loss"] / math.log(2))  # one char per token
    assert cli.main(["eval", str(run / "a"), f"--text={run / 'input.txt'}", "--max_tokens=1000"]) == 0
    out = capsys.readouterr().out
    assert "999 tokens" in out and "bits/char:" in out and "perplexity:" in out


@pytest.mark.parametrize("native", [False, True])
def test_eval_dtype(run: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    # auto: bf16 autocast exactly where training's auto would use it; the loss moves by bf16 rounding only.
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: native)
    results = {}
    for dtype in ("auto", "float32", "bfloat16"):
        assert cli.main(["eval", str(run / "a"), "--json", f"--dtype={dtype}"]) == 0
        results[dtype] = json.loads(capsys.readouterr().out)
        assert results[dtype]["dtype"] == {"auto": "bfloat16" if native else "float32"}.get(dtype, dtype)
    losses = {dtype: r["loss"] for dtype, r in results.items()}
    assert losses["auto"] == losses[results["auto"]["dtype"]]  # computed as it says, not only named so
    assert losses["bfloat16"] == pytest.approx(losses["float32"], abs=0.02) and losses["bfloat16"] != losses["float32"]
    assert cli.main(["eval", str(run / "a"), "--dtype=bfloat16"]) == 0
    assert "bf16 autocast" in capsys.readouterr().out
    assert cli.main(["eval", str(run / "a"), "--dtype=float16"]) == 2
    assert "--dtype" in capsys.readouterr().err


@pytest.mark.parametrize("bf16_faster", [False, True])
def test_sample_dtype(run: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                      bf16_faster: bool) -> None:
    # auto decodes with bf16 weights only where that was measured faster (injected timings), and says so on stderr.
    import torch

    from gptlab import generate

    autotune.reset()
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: True)
    times = {"plain": 1.0, "gemv": 2.0, "bfloat16": 0.5 if bf16_faster else 1.5}
    monkeypatch.setattr(autotune, "fastest_time", lambda name, fn: times[name])
    decoded_in = []  # the dtype of the weights each sample decoded with
    real = generate.generate
    monkeypatch.setattr(generate, "generate", lambda model, *a, **k: decoded_in.append(
        {p.dtype for p in model.parameters()}) or real(model, *a, **k))
    try:
        assert cli.main(["sample", str(run / "a"), "--prompt=ROMEO:", "--max_new_tokens=10"]) == 0
    finally:
        autotune.reset()
    out, err = capsys.readouterr()
    assert out.startswith("ROMEO:") and ("bf16 weights" in err) == bf16_faster
    assert decoded_in.pop() == {torch.bfloat16 if bf16_faster else torch.float32}
    # Asked for, not chosen: nothing to explain, and what was asked for whatever auto would pick.
    asked = "float32" if bf16_faster else "bfloat16"
    assert cli.main(["sample", str(run / "b"), f"--dtype={asked}", "--max_new_tokens=40", "--temperature=0"]) == 0
    assert "bf16" not in capsys.readouterr().err and decoded_in == [{getattr(torch, asked)}]


def test_plot(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ab.png"
    assert cli.main(["plot", str(run / "a"), str(run / "b"), f"--out={out}", "--labels=learned,rope"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "a" / "loss.png").is_file()  # written by training at each eval
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    assert cli.main(["plot", str(run / "a"), f"--out={tmp_path / 'loss.txt'}"]) == 2
    assert "give a file name ending in .png" in capsys.readouterr().err and not (tmp_path / "loss.txt").exists()


# --------------------------------------------------------------------------------------------------------
# gptlab export
# --------------------------------------------------------------------------------------------------------


def test_export_a_bpe_run_loads_in_transformers_with_its_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture
                                                                   ) -> None:
    # A modern-switch run on GPT-2's BPE: Llama format plus GPT-2's tokenizer files; transformers' Auto classes
    # load both, and the model computes what gptlab computes.
    transformers = pytest.importorskip("transformers")
    import torch

    from gptlab.model import GPT

    text = tmp_path / "input.txt"
    text.write_text(shakespeare_text()[:20_000], encoding="utf-8")
    assert T.main(["--preset=tiny", f"--data.path={text}", f"--data.cache_dir={tmp_path / 'cache'}",
                   "--data.tokenizer=gpt2", "--trainer.device=cpu", "--trainer.max_iters=2",
                   "--trainer.sample_tokens=0",
                   "--model.pos_emb=rope", "--model.norm=rmsnorm", "--model.mlp=swiglu", "--model.bias=False",
                   "--model.n_kv_head=2", f"--system.work_dir={tmp_path / 'run'}"]) == 0
    capsys.readouterr()
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "Hugging Face llama format" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 50256  # not Llama's 2
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("Hello world")["input_ids"] == [15496, 995]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ours = GPT.from_pretrained(tmp_path / "run" / "best")
    idx = torch.tensor([tok("To be, or not to be")["input_ids"]])
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() <= 1e-5
    # gptlab reads the export back too, pairing it with GPT-2's tokenizer.
    assert cli.main(["sample", str(tmp_path / "hf"), "--prompt=To be", "--max_new_tokens=3"]) == 0
    assert capsys.readouterr().out.startswith("To be")


def test_export_a_char_run_and_refusals(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["export", str(run / "a"), str(tmp_path / "a")]) == 0
    assert "Hugging Face gpt2 format" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model_type"] == "gpt2"
    # Not under the name tokenizer.json, which transformers would read as its own format.
    assert json.loads((tmp_path / "a" / "gptlab_tokenizer.json").read_text())["type"] == "char"
    assert not (tmp_path / "a" / "tokenizer.json").exists()
    assert cli.main(["sample", str(tmp_path / "a"), "--prompt=ROMEO:", "--max_new_tokens=5"]) == 0
    capsys.readouterr()
    assert cli.main(["export", str(run / "b"), str(tmp_path / "a")]) == 2  # DST not empty: nothing overwritten
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main(["export", str(run / "b")]) == 2
    assert "expected RUN_OR_MODEL and DST" in capsys.readouterr().err


def test_export_and_convert_keep_a_hugging_face_models_own_tokenizer(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    # A Llama with its own vocabulary: gptlab has no tokenizer for it, so its files travel with the weights.
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "llama" / name).write_text(json.dumps({"stand-in": name}), encoding="utf-8")
    assert cli.main(["export", str(tmp_path / "llama"), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "own tokenizer files (tokenizer.json, tokenizer_config.json, generation_config.json)" in printed
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text()) == {"stand-in": "tokenizer.json"}
    assert cli.main(["convert", "--to-gqa", "2", str(tmp_path / "llama"), str(tmp_path / "gqa")]) == 0
    out = capsys.readouterr().out
    assert "uptrain it with transformers" in out and "gptlab train" not in out
    assert (tmp_path / "gqa" / "tokenizer_config.json").is_file()
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gqa").config.num_key_value_heads == 2


def test_eval_says_what_its_loss_covers(run: Path, capsys: pytest.CaptureFixture) -> None:
    # Training prints estimates over a few batches; eval's exact loss says it covers the whole split (or text).
    assert cli.main(["eval", str(run / "a")]) == 0
    assert "nats/token: val loss (whole split)\n" in capsys.readouterr().out
    assert cli.main(["eval", str(run / "a"), f"--text={run / 'input.txt'}", "--max_tokens=1000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss_label"] == "loss (first 1,000 tokens of the text)"


@pytest.mark.parametrize("command, args", [
    ("sample", []), ("eval", []), ("export", ["DST"]), ("attention", ["--prompt=ab"]),
])
def test_model_commands_load_the_checkpoint_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      command: str, args: list[str]) -> None:
    # Every command that loads a run's model hands --checkpoint to the one loader (checkpoint.load_model).
    from gptlab import attention_maps, checkpoint

    asked: list[str] = []

    def loader(source: str, which: str = "best", *rest: object, **kw: object) -> None:
        asked.append(which)
        raise checkpoint.CheckpointError("stop here")

    monkeypatch.setattr(checkpoint, "load_model", loader)
    monkeypatch.setattr(attention_maps, "load_model", loader)
    args = [str(tmp_path / "dst") if a == "DST" else a for a in args]
    for which in ("last", "best"):
        assert cli.main([command, str(tmp_path), *args, f"--checkpoint={which}"]) == 2
    assert asked == ["last", "best"]
