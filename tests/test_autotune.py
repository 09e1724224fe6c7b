"""The fast-path dispatcher's logic, with injected timings (real timings never go into tests)."""

import ast
import json

import pytest
import torch
import torch.nn as nn

from gptlab import autotune, hardware
from gptlab.config import GPTConfig
from gptlab.generate import _decode_linears, cast_weights, decode_dtype, generate
from gptlab.model import GPT


@pytest.fixture(autouse=True)
def fresh_choices():
    threads = torch.get_num_threads()
    autotune.reset()
    yield
    autotune.reset()
    # Some tests here need threads to split over. Later tests compare runs in this process with runs in
    # subprocesses (test_reliability.py), whose thread count is the environment's: float sums depend on it.
    torch.set_num_threads(threads)


def fake_timer(times: dict[str, float], calls: list[str] | None = None):
    def timer(name, fn):
        if calls is not None:
            calls.append(name)
        return times[name]

    return timer


def test_picks_the_fastest_candidate_and_runs_each_once():
    calls: list[str] = []
    timer = fake_timer({"plain": 1.0, "a": 0.5, "b": 0.7}, calls)
    ran: list[str] = []
    candidates = {n: (lambda n=n: ran.append(n)) for n in ("plain", "a", "b")}
    assert autotune.choose("op", (1, 2), candidates, timer) == "a"
    assert sorted(calls) == ["a", "b", "plain"]
    assert ran == []  # the injected timer decides; the candidates themselves are not run by choose


def test_a_fast_path_within_the_margin_loses_to_the_plain_op():
    almost = 1.0 * (1 - autotune.MARGIN) + 1e-3
    clearly = 1.0 * (1 - autotune.MARGIN) - 1e-3
    both = {"plain": None, "fast": None}
    assert autotune.choose("op", 1, both, fake_timer({"plain": 1.0, "fast": almost})) == "plain"
    assert autotune.choose("op", 2, both, fake_timer({"plain": 1.0, "fast": clearly})) == "fast"


def test_never_slower_than_plain():
    assert autotune.choose("op", 1, {"plain": None, "slow": None}, fake_timer({"plain": 1.0, "slow": 2.0})) == "plain"


def test_choice_is_cached_per_op_and_key():
    calls: list[str] = []
    both = {"plain": None, "fast": None}
    assert autotune.choose("op", "k", both, fake_timer({"plain": 1.0, "fast": 0.1}, calls)) == "fast"
    # A later call with other timings keeps the first choice and times nothing.
    assert autotune.choose("op", "k", both, fake_timer({"plain": 0.1, "fast": 1.0}, calls)) == "fast"
    assert len(calls) == 2
    assert autotune.choose("op", "other", both, fake_timer({"plain": 0.1, "fast": 1.0})) == "plain"
    made = [(op, key, best) for op, key, best, _ in autotune.choices()]
    assert made == [("op", "'k'", "fast"), ("op", "'other'", "plain")]


def test_the_plain_op_must_be_a_candidate():
    with pytest.raises(ValueError, match="plain"):
        autotune.choose("op", 1, {"fast": None}, fake_timer({"fast": 0.1}))


def test_while_compiling_nothing_is_timed(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    calls: list[str] = []
    timer = fake_timer({"plain": 1, "fast": 0}, calls)
    assert autotune.choose("op", 1, {"plain": None, "fast": None}, timer) == "plain"
    assert calls == [] and autotune.choices() == []


def test_pinned_choices_are_made_again_without_timing():
    autotune.choose("op", (1, "x"), {"plain": None, "fast": None}, fake_timer({"plain": 1.0, "fast": 0.1}))
    rows = json.loads(json.dumps(autotune.pinned()))  # through a checkpoint's JSON
    autotune.reset()
    autotune.pin(rows)
    calls: list[str] = []
    timer = fake_timer({"plain": 0.1, "fast": 1.0}, calls)  # would now choose plain
    assert autotune.choose("op", (1, "x"), {"plain": None, "fast": None}, timer) == "fast"
    assert calls == []


def test_a_pinned_candidate_that_no_longer_exists_is_measured_again():
    autotune.pin([["op", "1", "gone"]])
    assert autotune.choose("op", 1, {"plain": None, "fast": None}, fake_timer({"plain": 1.0, "fast": 0.1})) == "fast"


def test_fastest_time_runs_warmup_then_repeats():
    ran = []
    t = autotune.fastest_time("x", lambda: ran.append(1), repeats=3)
    assert len(ran) == 4 and t >= 0


def patched(model: nn.Module) -> set[tuple[int, int]]:
    """Weight shapes of the Linear layers whose forward is replaced inside _decode_linears."""
    return {tuple(m.weight.shape) for m in model.modules() if "forward" in vars(m)}


@pytest.mark.parametrize("winner", ["plain", "gemv"])
def test_decode_uses_gemv_only_where_it_was_measured_faster(monkeypatch, winner):
    torch.set_num_threads(2)
    gemv_time = 0.5 if winner == "gemv" else 2.0
    monkeypatch.setattr(autotune, "fastest_time", fake_timer({"plain": 1.0, "gemv": gemv_time}))
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32))
    with _decode_linears(model):
        inside = patched(model)
    assert patched(model) == set()
    all_shapes = {tuple(m.weight.shape) for m in model.modules() if type(m) is nn.Linear}
    assert inside == (all_shapes if winner == "gemv" else set())
    # One choice per weight shape, recorded with its timings.
    assert {ast.literal_eval(key)[0] for op, key, _, _ in autotune.choices() if op == "decode linear"} == all_shapes


def test_decode_is_the_same_whichever_path_wins(monkeypatch):
    torch.set_num_threads(2)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32))
    idx = torch.randint(0, 64, (1, 4))
    outs = []
    for gemv in (2.0, 0.5):
        autotune.reset()
        monkeypatch.setattr(autotune, "fastest_time", fake_timer({"plain": 1.0, "gemv": gemv}))
        outs.append(generate(model, idx, 12, temperature=0))
    assert torch.equal(outs[0], outs[1])


def _tiny_run(tmp_path, name: str, iters: int, resume: bool, *extra: str) -> list[str]:
    """gptlab train flags of a tiny CPU run in tmp_path/name, on a slice of the default Shakespeare text."""
    from gptlab.data import shakespeare_text

    text = tmp_path / "t.txt"
    if not text.exists():
        text.write_text(shakespeare_text()[:20_000], encoding="utf-8")
    return [
        "--preset=tiny", f"--data.path={text}", f"--data.cache_dir={tmp_path / 'cache'}",
        f"--system.work_dir={tmp_path / name}", "--trainer.device=cpu", f"--trainer.max_iters={iters}",
        "--trainer.lr_decay_iters=8", "--trainer.log_interval=1", "--trainer.eval_interval=4",
        f"--trainer.resume={resume}", *extra,
    ]


def test_resume_pins_the_kernels_the_interrupted_run_measured(tmp_path, monkeypatch):
    """The SWA paths differ in rounding: a resumed process that measured again could pick another one and
    drift from the uninterrupted run. The checkpoint carries the choices."""
    from gptlab import train as T

    def run(name: str, iters: int, resume: bool = False) -> list[str]:
        return _tiny_run(tmp_path, name, iters, resume, "--trainer.sample_tokens=0", "--model.pos_emb=rope",
                         "--model.window=6")

    def prefer(winner: str) -> None:
        autotune.reset()
        monkeypatch.setattr(autotune, "fastest_time", lambda name, fn: 0.1 if name == winner else 1.0)

    prefer("flash bq=6 half")
    assert T.main(run("straight", 8)) == 0
    prefer("flash bq=6 half")
    assert T.main(run("resumed", 4)) == 0
    prefer("masked sdpa")  # a second process that would measure otherwise
    assert T.main(run("resumed", 8, resume=True)) == 0
    swa = [(best, times) for op, _, best, times in autotune.choices() if op == "cpu sliding window"]
    assert swa and all(not times for _, times in swa)  # pinned, not measured
    assert {best for best, _ in swa} == {"flash bq=6 half", "plain"}  # training; eval (no backward to halve)
    straight = [(r["iter"], r["loss"]) for r in T.read_metrics(tmp_path / "straight") if "loss" in r]
    resumed = [(r["iter"], r["loss"]) for r in T.read_metrics(tmp_path / "resumed") if "loss" in r]
    assert resumed == straight
    autotune.reset()


def test_sampling_during_training_does_not_move_the_dropout_rng(tmp_path, monkeypatch):
    """The decode choice is made at the first sample, after a checkpoint: timing it must not draw from torch's
    RNG (the dropout stream), or a resumed run, which has no such sample, would drop other units."""
    from gptlab import train as T

    torch.set_num_threads(2)  # the GEMV choice is only timed with threads to split over

    def run(name: str, iters: int, resume: bool = False) -> list[str]:
        return _tiny_run(tmp_path, name, iters, resume, "--trainer.sample_tokens=4", "--model.dropout=0.1")

    assert T.main(run("straight", 8)) == 0
    autotune.reset()  # a new process: the choice is timed again at its first sample
    assert T.main(run("resumed", 4)) == 0
    autotune.reset()
    assert T.main(run("resumed", 8, resume=True)) == 0
    straight = [(r["iter"], r["loss"]) for r in T.read_metrics(tmp_path / "straight") if "loss" in r]
    resumed = [(r["iter"], r["loss"]) for r in T.read_metrics(tmp_path / "resumed") if "loss" in r]
    assert resumed == straight


@pytest.mark.parametrize("native, bf16_time, expected", [
    (False, 0.1, torch.float32),  # emulated bf16: never timed, never chosen
    (True, 0.5, torch.bfloat16),
    (True, 0.97, torch.float32),  # faster, but within the margin: the plain fp32 pass stays
])
def test_decode_dtype_picks_bf16_only_where_native_and_measured_faster(monkeypatch, native, bf16_time, expected):
    torch.set_num_threads(2)
    calls: list[str] = []
    computed: list[set[torch.dtype]] = []  # the dtypes each timed candidate computed in (it runs once here)
    times = {"plain": 1.0, "gemv": 2.0, "bfloat16": bf16_time}

    def timer(name, fn):
        calls.append(name)
        computed.append({y.dtype for y in fn()})
        return times[name]

    monkeypatch.setattr(autotune, "fastest_time", timer)
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: native)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32))
    assert decode_dtype(model) == expected
    assert ("bfloat16" in calls) == native
    if native:  # the two passes timed: the model's fp32 weights, and bf16 copies of them (timed right after)
        at = calls.index("bfloat16")
        assert computed[at - 1] == {torch.float32} and computed[at] == {torch.bfloat16}
        assert all(p.dtype == torch.float32 for p in model.parameters())  # copies: the model is left as it was
        # each pass through each shape's fastest kernel in its dtype: those were chosen, fp32's and bf16's
        linear = {key for op, key, _, _ in autotune.choices() if op == "decode linear"}
        assert {dtype for dtype in ("torch.float32", "torch.bfloat16") if any(dtype in k for k in linear)} == {
            "torch.float32", "torch.bfloat16"}
    assert decode_dtype(model) == expected and calls.count("bfloat16") == int(native)  # once per process
    cast_weights(model, torch.bfloat16)
    assert decode_dtype(model) == torch.bfloat16  # a bf16 model decodes in bf16, untimed


def test_median_time_is_the_typical_run_not_the_best():
    import time as time_module

    durations = iter([0.0, 0.0, 0.001, 0.05, 0.05, 0.05, 0.001])  # two warm-ups, then five timed runs
    assert autotune.median_time("x", lambda: time_module.sleep(next(durations))) >= 0.04


def test_decode_dtype_measures_nothing_and_stays_fp32_without_linear_layers(monkeypatch):
    # Nothing to time (no CPU nn.Linear: ExpertLinear and embeddings only): two empty passes would be compared, and
    # timing noise could pick bf16 for nothing. fp32 stays, untimed.
    from gptlab.model import ExpertLinear

    calls: list[str] = []
    monkeypatch.setattr(autotune, "fastest_time", fake_timer({"plain": 1.0, "bfloat16": 0.5}, calls))
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: True)
    model = nn.Sequential(nn.Embedding(16, 8), ExpertLinear(2, 8, 8, bias=False))
    assert decode_dtype(model) == torch.float32 and calls == []
