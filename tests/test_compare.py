"""gptlab convert (MHA -> GQA by mean-pooling K/V heads) and gptlab compare (grid, skip/resume, report)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from gptlab.compare import convert_main, convert_to_gqa, main, parse_grid, run_device
from gptlab.config import SWITCHES, GPTConfig
from gptlab.model import GPT
from gptlab.options import UsageError


def _mha(bias: bool = True, **kw) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=bias, **kw)
    model = GPT(config).eval()
    with torch.no_grad():  # non-zero biases, so pooling them is tested too
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return model


def test_identity_when_n_equals_n_head() -> None:
    model = _mha()
    out = convert_to_gqa(model, 4)
    assert out.config == model.config
    for key, t in model.state_dict().items():
        assert torch.equal(out.state_dict()[key], t), key
    idx = torch.randint(0, 50, (2, 16))
    assert torch.equal(out(idx)[0], model(idx)[0])


@pytest.mark.parametrize("n_kv", [2, 1])
def test_pooled_heads_are_group_means(n_kv: int) -> None:
    model = _mha()
    out = convert_to_gqa(model, n_kv)
    assert out.config.n_kv_head == n_kv
    hd, nh = 8, 4
    r = nh // n_kv
    for layer in range(2):
        for suffix in ("weight", "bias"):
            src = model.state_dict()[f"transformer.h.{layer}.attn.c_attn.{suffix}"]
            dst = out.state_dict()[f"transformer.h.{layer}.attn.c_attn.{suffix}"]
            assert dst.shape[0] == (nh + 2 * n_kv) * hd
            assert torch.equal(dst[: nh * hd], src[: nh * hd])  # queries untouched
            for part, (s0, d0) in {"k": (nh * hd, nh * hd), "v": (2 * nh * hd, (nh + n_kv) * hd)}.items():
                for g in range(n_kv):
                    heads = [src[s0 + h * hd : s0 + (h + 1) * hd] for h in range(g * r, (g + 1) * r)]
                    expected = sum(heads) / r
                    got = dst[d0 + g * hd : d0 + (g + 1) * hd]
                    torch.testing.assert_close(got, expected, msg=f"{part} group {g} {suffix}")
    # Everything outside c_attn is copied.
    for key, t in model.state_dict().items():
        if "c_attn" not in key:
            assert torch.equal(out.state_dict()[key], t), key


def test_bad_n_kv_head() -> None:
    with pytest.raises(ValueError, match="divide"):
        convert_to_gqa(_mha(), 3)


def test_convert_main_gpt2_dir_to_loadable_gqa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _mha()  # a vanilla GPT-2 config: save_pretrained writes it in Hugging Face GPT-2 format
    src, dst = tmp_path / "gpt2", tmp_path / "gqa"
    model.save_pretrained(src)
    assert json.loads((src / "config.json").read_text())["model_type"] == "gpt2"
    assert convert_main(["--to-gqa", "2", str(src), str(dst)]) == 0
    assert "4 -> 2 K/V heads" in capsys.readouterr().out
    assert json.loads((dst / "config.json").read_text())["model_type"] == "gptlab"
    loaded = GPT.from_pretrained(dst)
    assert loaded.config.n_kv_head == 2
    expected = convert_to_gqa(GPT.from_pretrained(src), 2)
    idx = torch.randint(0, 50, (1, 16))
    torch.testing.assert_close(loaded(idx)[0], expected(idx)[0])
    with pytest.raises(UsageError):
        convert_main(["--to-gqa", "3", str(src), str(tmp_path / "bad")])
    with pytest.raises(UsageError):
        convert_main([str(src), str(dst)])
    # Never into a directory that holds something: not the source, not an earlier conversion.
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for target in (src, dst):
        with pytest.raises(UsageError, match="exists and is not empty"):
            convert_main(["--to-gqa", "1", str(src), str(target)])
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    (tmp_path / "empty").mkdir()
    assert convert_main(["--to-gqa", "1", str(src), str(tmp_path / "empty")]) == 0


def test_parse_grid(tmp_path: Path) -> None:
    base = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)
    grid = parse_grid(None, base)
    variants = [v.name for s in SWITCHES for v in s.variants]  # the table's order
    assert list(grid) == ["baseline", *variants, "modern"]
    assert variants[:6] == ["rope", "gqa", "mqa", "swa", "rmsnorm", "swiglu"]
    assert grid["gqa"] == {"n_kv_head": 2} and grid["swa"] == {"window": 16}
    assert grid["modern"] == {"pos_emb": "rope", "n_kv_head": 2, "window": 16, "norm": "rmsnorm", "mlp": "swiglu",
                              "mlp_hidden": 170}
    # SwiGLU's hidden size keeps the MLP's parameters equal to GPT-2's (to within one row), with or without biases.
    for bias in (False, True):
        cfg = base.replace(bias=bias, n_embd=128)
        variant = cfg.replace(**parse_grid(None, cfg)["swiglu"])
        n_gelu, n_swiglu = (sum(p.numel() for p in GPT(c).transformer.h[0].mlp.parameters()) for c in (cfg, variant))
        assert abs(n_swiglu - n_gelu) <= 3 * 128, (bias, n_gelu, n_swiglu)
    assert list(parse_grid("baseline,rope", base)) == ["baseline", "rope"]
    with pytest.raises(UsageError, match="unknown variant"):
        parse_grid("baseline,nope", base)
    yml = tmp_path / "g.yaml"
    yml.write_text("base: {}\nkv1: {n_kv_head: 1}\n")
    assert parse_grid(str(yml), base) == {"base": {}, "kv1": {"n_kv_head": 1}}
    yml.write_text("bad: {n_kv_head: 3}\n")
    with pytest.raises(UsageError, match="bad"):
        parse_grid(str(yml), base)


def test_compare_end_to_end_skip_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    args = ["--preset=micro", "--grid=baseline,rope", "--seeds=1", f"--out={out}", "--trainer.max_iters=4"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    for needle in ("+RoPE", "baseline (GPT-2)", "n/a: learned positions end at block_size", "Δ vs baseline",
                   "MHA → GQA uptraining", "converted to GQA, before uptraining", "**+RoPE**"):
        assert needle in report, needle
    assert "± 0.0000" not in report  # one seed: no spread to show
    assert (out / "val_loss.png").stat().st_size > 1000 and (out / "tokens_per_s.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["rope"]["extrapolation"]["4x"] is not None
    assert results["summary"]["baseline"]["extrapolation"]["2x"] is None
    assert (out / ".gitignore").read_text() == "runs/\n"
    # Speeds come from one side-by-side phase over every variant, and the table shows those numbers.
    speeds = results["speeds"]
    assert set(speeds["variants"]) == {"baseline", "rope"} and speeds["rounds"] >= 3
    for name, v in speeds["variants"].items():
        assert v["train_tokens_per_step"] == 4 * 32 and v["decode_tokens"] == 8
        assert results["summary"][name]["train_tokens_per_s"] == v["train_tokens_per_s"] > 0
        assert results["summary"][name]["decode_tokens_per_s"] == v["decode_tokens_per_s"] > 0
    assert "measured side by side after training" in report
    # --report-only: the report of the runs, with the settings they were trained with (not the flags of the
    # report's own command: here none but --out) and the speeds measured after them, training nothing.
    assert main([f"--out={out}", "--report-only"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["speeds"] == speeds and again["meta"]["trainer"]["max_iters"] == 4
    assert "--seeds=1" in again["meta"]["command"] and "--trainer.max_iters=4" in again["meta"]["command"]
    assert "INCOMPLETE" not in (out / "report.md").read_text()
    with pytest.raises(UsageError, match="drop --grid=baseline,rope,gqa"):
        main([*args[:1], "--grid=baseline,rope,gqa", *args[2:], "--report-only"])
    rope_result = out / "runs" / "rope-s0" / "result.json"
    rope_result.unlink()
    assert main([f"--out={out}", "--report-only"]) == 0
    assert "INCOMPLETE comparison, missing runs: rope (1 of 1 seeds)" in (out / "report.md").read_text()
    capsys.readouterr()

    # Runs started with other settings are never reused under the new ones; nothing trains.
    with pytest.raises(UsageError, match=r"3 run\(s\) .* other settings \(--trainer.max_iters=5 \(was 4\)\)") as e:
        main([*args[:-1], "--trainer.max_iters=5"])
    for stale in ("baseline-s0", "rope-s0", "uptrain.json", "scratch-gqa-s0"):  # all named, uptraining included
        assert stale in str(e.value)
    grid = tmp_path / "grid.yaml"
    grid.write_text("baseline: {}\nrope: {pos_emb: rope, n_kv_head: 2}\n")
    with pytest.raises(UsageError, match=r"1 run\(s\) .* \(--model.n_kv_head=2 \(was \(unset\)\)\).*rope-s0$"):
        main([args[0], f"--grid={grid}", *args[2:]])
    # An empty speeds file (no checkpoints were left to time) is measured again, not a crash.
    (out / "runs" / "speeds.json").write_text("{}")
    assert main([f"--out={out}", "--report-only"]) == 0
    # Runs without settings.json (an older gptlab): the report needs the training command's flags.
    (out / "runs" / "settings.json").unlink()
    with pytest.raises(UsageError, match="no settings.json"):
        main([f"--out={out}", "--report-only"])
    assert main([*args, "--report-only"]) == 0

    # A second run skips everything complete; a run without result.json (interrupted) resumes its checkpoint.
    mtime = (out / "runs" / "baseline-s0" / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "baseline seed 0: complete, skipped" in printed
    assert "uptraining experiment: complete, skipped" in printed
    assert "resuming at iter 4" in printed or "already at iter 4" in printed
    assert rope_result.is_file()
    assert (out / "runs" / "baseline-s0" / "result.json").stat().st_mtime_ns == mtime


def test_compare_usage_errors() -> None:
    with pytest.raises(UsageError):
        main(["--preset=nope"])
    with pytest.raises(UsageError):
        main(["--seeds=0"])
    with pytest.raises(UsageError):
        main(["--bogus"])
    with pytest.raises(UsageError, match="did you mean --trainer.max_iters"):  # before any training starts
        main(["--preset=micro", "--out=/nonexistent/never", "--trainer.max_iter=3"])
    with pytest.raises(UsageError, match="nope.yaml: file not found"):
        main(["--grid=nope.yaml"])


def test_compare_settings_are_typed() -> None:
    from gptlab.compare import parse_compare_args

    s, run_flags = parse_compare_args(["--preset=micro", "--seeds=3", "--no-uptrain", "--report-only",
                                       "--trainer.max_iters=4", "--data.path=x.txt", "--note=a b"])
    assert (s.preset, s.seeds, s.uptrain, s.report_only, s.note) == ("micro", 3, False, True, "a b")
    assert s.out_dir == Path("reports/micro")
    assert run_flags == ["--trainer.max_iters=4", "--data.path=x.txt"]  # for the runs, in order
    with pytest.raises(UsageError, match="--seeds expects an integer"):
        parse_compare_args(["--seeds=two"])


def test_report_only_without_runs_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no complete runs"):
        main(["--preset=micro", f"--out={tmp_path / 'new'}", "--report-only"])
    assert not (tmp_path / "new").exists()
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            main(["--trainer.device=cuda"])


def test_compare_measures_on_the_device_it_trains_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a GPU present, --trainer.device=cpu runs train on the CPU, so their speeds are measured there too.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert run_device({"trainer": {"device": "cpu"}}) == torch.device("cpu")
    assert run_device({"trainer": {}}) == torch.device("cuda", 0)


def test_compare_measures_on_the_data_it_trains_on(tmp_path: Path) -> None:
    text = tmp_path / "abc.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    out = tmp_path / "rep"
    args = ["--preset=micro", "--grid=baseline", "--seeds=1", f"--out={out}", "--no-uptrain",
            f"--data.path={text}", "--data.tokenizer=char", f"--data.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["data"] == f"{text} (char)"
    assert results["summary"]["baseline"]["config"]["vocab_size"] == len(set(text.read_text()))
    assert (tmp_path / "cache").is_dir()


def test_converted_run_keeps_its_data_for_eval_and_uptraining(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `gptlab eval CONVERTED` once failed ("no state.json; pass --text"): the converted model keeps its source
    # run's data, so it is measured on the same val split, and the printed uptraining command trains on that data.
    from gptlab import cli
    from gptlab.data import shakespeare_text
    from gptlab.train import main as train_main

    text = tmp_path / "text.txt"
    text.write_text(shakespeare_text()[:20_000].lower(), encoding="utf-8")  # not the default data, nor its chars
    run, dst = tmp_path / "run", tmp_path / "gqa"
    common = [f"--data.path={text}", f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.device=cpu"]
    assert train_main(["--preset=tiny", "--trainer.max_iters=2", f"--system.work_dir={run}", *common]) == 0
    assert convert_main(["--to-gqa", "2", str(run), str(dst)]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    assert cli.main(["eval", str(dst), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == f"{text} (validation split)" and result["tokens"] > 0
    # The uptraining command, as printed (told to stop after 2 steps).
    argv = shlex.split(hint.removeprefix("uptrain with: "))
    assert argv[:2] == ["gptlab", "train"] and f"--init={dst}" in argv
    monkeypatch.chdir(tmp_path)  # out/... stays in tmp_path if a work dir were relative
    assert cli.main([*argv[1:], "--trainer.max_iters=2"]) == 0
    assert (tmp_path / "gqa-uptrain" / "last").is_dir()


def test_compare_log_is_one_line_per_run_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The log was ~80 lines per run (progress, evals, a sample, hints); now: one line per run, then a summary.
    out = tmp_path / "rep"
    assert main(["--preset=micro", "--grid=baseline,rope", "--seeds=1", f"--out={out}", "--trainer.max_iters=4"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert all(line.startswith("[compare]") for line in lines), captured.out
    for run in ("baseline", "rope"):
        assert len([line for line in lines if line.startswith(f"[compare] {run} seed 0: final val loss ")]) == 1
    assert len([line for line in lines if line.startswith("[compare] uptraining experiment: ")]) == 1
    assert "(1 of 1 seeds)" in lines[-2] and lines[-1].startswith("[compare] report: ")
    assert len(lines) == 8, captured.out  # 2 runs, uptraining, speed, the summary's 3 lines, the report
    assert captured.err == ""


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished micro comparison of the baseline, one seed; tests copy it."""
    out = tmp_path_factory.mktemp("compare") / "rep"
    assert main(["--preset=micro", "--grid=baseline", "--seeds=1", f"--out={out}", "--no-uptrain",
                 "--trainer.max_iters=4"]) == 0
    return out


def test_report_spreads_are_over_the_seeds_completed(
    one_seed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    shutil.copytree(one_seed, out)
    # As if the comparison had been started with 3 seeds and only seed 0 were done: the report showed
    # "± 0.0000" (a spread over the 3 planned seeds); now it shows no spread and says how many seeds it has.
    settings_path = out / "runs" / "settings.json"
    settings = json.loads(settings_path.read_text())
    settings["argv"] = [a if a != "--seeds=1" else "--seeds=3" for a in settings["argv"]]
    settings_path.write_text(json.dumps(settings))
    assert main([f"--out={out}", "--report-only"]) == 0
    report = (out / "report.md").read_text()
    loss = json.loads((out / "runs" / "baseline-s0" / "result.json").read_text())["final_val_loss"]
    assert f"| {loss:.4f} (1 of 3 seeds) |" in report and "± 0.0000" not in report
    # Each loss says how it was measured (micro: 1 batch for the trainer's evals and for the windows).
    assert "| final val loss (1-batch estimate) | Δ vs baseline |" in report
    assert "| variant | val loss at 1× (1-batch estimate) | 2× | 4× |" in report
    # A second seed: mean ± std over those 2.
    s1 = out / "runs" / "baseline-s1"
    s1.mkdir()
    r1 = json.loads((out / "runs" / "baseline-s0" / "result.json").read_text())
    r1.update(seed=1, final_val_loss=loss + 0.01)
    (s1 / "result.json").write_text(json.dumps(r1))
    assert main([f"--out={out}", "--report-only"]) == 0
    assert f"| {loss + 0.005:.4f} ± 0.0071 (2 of 3 seeds) |" in (out / "report.md").read_text()
    assert "(2 of 3 seeds)" in capsys.readouterr().out  # the summary lines say it too


def test_report_only_does_not_time_while_runs_train(
    one_seed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptlab.compare as C
    from gptlab.checkpoint import RunLock

    out = tmp_path / "rep"
    shutil.copytree(one_seed, out)
    (out / "runs" / "speeds.json").unlink()  # so a report would time the variants

    def timed(*args: object, **kwargs: object) -> None:
        raise AssertionError("timed the variants while runs were training")

    monkeypatch.setattr(C, "measure_speeds", timed)
    # While the comparison runs (it holds OUT/runs/.lock), --report-only times nothing and says so.
    with RunLock(out / "runs"):
        assert main([f"--out={out}", "--report-only"]) == 0
        assert "runs are training in" in capsys.readouterr().out
        assert "written while runs trained" in (out / "report.md").read_text()
        with pytest.raises(UsageError, match="another gptlab compare is running in"):
            main(["--preset=micro", "--grid=baseline", "--seeds=1", f"--out={out}", "--no-uptrain",
                  "--trainer.max_iters=4"])


def test_printed_rm_command_removes_the_stale_runs(one_seed: Path, tmp_path: Path) -> None:
    # The command in the "trained with other settings" error works as printed, spaces in --out included.
    out = tmp_path / "my rep"
    shutil.copytree(one_seed, out)
    with pytest.raises(UsageError, match="rm -r ") as e:
        main(["--preset=micro", "--grid=baseline", "--seeds=1", f"--out={out}", "--no-uptrain",
              "--trainer.max_iters=5"])
    argv = shlex.split(str(e.value).rpartition(": ")[2])
    assert argv[:2] == ["rm", "-r"] and argv[2:] == [str(out / "runs" / "baseline-s0")]


def test_report_shows_active_params_and_the_load_per_expert(tmp_path: Path) -> None:
    from gptlab.info import model_stats
    from gptlab.train import read_metrics

    out = tmp_path / "rep"
    assert main(["--preset=micro", "--grid=baseline,moe", "--seeds=1", f"--out={out}", "--no-uptrain",
                 "--trainer.max_iters=8", "--trainer.log_interval=1"]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    moe, base = summary["moe"], summary["baseline"]
    assert base["active_params"] == base["params"] and not base["moe_load"]
    assert moe["active_params"] == model_stats(GPTConfig(**moe["config"])).active_params < moe["params"]
    # The load is where training left the routers: the mean of the last 5 logged steps, per expert.
    logged = [r["moe_load"] for r in read_metrics(out / "runs" / "moe-s0") if "moe_load" in r][-5:]
    assert len(logged) == 5
    assert moe["moe_load"]["0"] == pytest.approx([sum(col) / 5 for col in zip(*logged, strict=True)])
    aux = [r["moe_aux_loss"] for r in read_metrics(out / "runs" / "moe-s0") if "moe_load" in r][-5:]
    assert moe["moe_aux_loss"]["0"] == pytest.approx(sum(aux) / 5)
    report = (out / "report.md").read_text()
    assert f"| +MoE | {moe['params']:,} | {moe['active_params']:,} |" in report
    load = moe["moe_load"]["0"]  # its row: each expert's share in expert order, max / min, aux
    row = " | ".join(f"{x:.1%}" for x in load) + f" | {max(load) / max(min(load), 1e-9):.2f} | "
    assert "## Mixture of experts: load per expert" in report
    assert f"| +MoE | 0 | {row}{moe['moe_aux_loss']['0']:.3f} |" in report
    share = moe["active_params"] / moe["params"]
    assert f"{moe['active_params']:,} active per token ({share:.0%} of its total)" in report and share < 0.5

    # result.json of an older gptlab (no active params, no load): --report-only still reports, the active params
    # from the config (not the total, which would say a token runs through every expert), and no load section.
    for path in (out / "runs").glob("*/result.json"):
        result = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in result.items()
                                    if k not in ("active_params", "moe_load", "moe_aux_loss")}))
    assert main([f"--out={out}", "--report-only"]) == 0
    old = json.loads((out / "results.json").read_text())["summary"]
    assert old["moe"]["active_params"] == moe["active_params"] and old["baseline"]["active_params"] == base["params"]
    report = (out / "report.md").read_text()
    assert f"{moe['active_params']:,} active per token" in report and "load per expert" not in report
