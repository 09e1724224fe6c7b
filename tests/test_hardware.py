"""gptlab.hardware: the CPU's bf16 support decides --trainer.dtype=auto; info --hardware shows the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptlab import autotune, hardware
from gptlab import info as I
from gptlab import train as T
from gptlab.data import shakespeare_text


@pytest.mark.parametrize("amx,avx512_bf16,native", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_is_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, native):
    monkeypatch.delenv("GPTLAB_NATIVE_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert hardware.native_bf16_cpu() is native
    assert hardware.bf16_autocast_pays(torch.device("cpu")) is native
    assert hardware.bf16_autocast_pays(torch.device("meta")) is False


def test_the_environment_overrides_detection(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setenv("GPTLAB_NATIVE_BF16", "0")
    assert not hardware.native_bf16_cpu()
    monkeypatch.setenv("GPTLAB_NATIVE_BF16", "1")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert hardware.native_bf16_cpu()


def test_isa_names_the_widest(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    assert hardware.cpu_isa() == "AVX-512"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert hardware.cpu_isa() == "AMX"
    assert "-amx-" in hardware.machine_kind(threads=2) and hardware.machine_kind(threads=2).endswith("-2t")


def _tiny_run(tmp_path: Path, name: str, dtype: str) -> list[str]:
    text = tmp_path / "t.txt"
    if not text.exists():
        text.write_text(shakespeare_text()[:20_000], encoding="utf-8")
    return [
        "--preset=tiny", f"--data.path={text}", f"--data.cache_dir={tmp_path / 'cache'}",
        f"--system.work_dir={tmp_path / name}", "--trainer.device=cpu", "--trainer.sample_tokens=0",
        "--trainer.max_iters=3", "--trainer.log_interval=1", f"--trainer.dtype={dtype}",
    ]


def _losses(work_dir: Path) -> list[float]:
    return [r["loss"] for r in T.read_metrics(work_dir) if "loss" in r]


def test_auto_dtype_trains_in_bf16_exactly_where_the_cpu_has_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTLAB_NATIVE_BF16", "1")
    assert T.main(_tiny_run(tmp_path, "auto_native", "auto")) == 0
    assert "bf16 autocast" in capsys.readouterr().out
    assert T.main(_tiny_run(tmp_path, "bf16", "bfloat16")) == 0
    monkeypatch.setenv("GPTLAB_NATIVE_BF16", "0")
    assert T.main(_tiny_run(tmp_path, "auto_plain", "auto")) == 0
    assert ", fp32" in capsys.readouterr().out
    assert T.main(_tiny_run(tmp_path, "fp32", "float32")) == 0
    assert _losses(tmp_path / "auto_native") == _losses(tmp_path / "bf16")
    assert _losses(tmp_path / "auto_plain") == _losses(tmp_path / "fp32")
    assert _losses(tmp_path / "bf16") != _losses(tmp_path / "fp32")


def test_info_hardware_measures_and_lists_the_fast_paths(monkeypatch, capsys):
    autotune.reset()
    monkeypatch.setattr(autotune, "fastest_time", lambda name, fn: {"plain": 1.0}.get(name, 0.5))
    argv = ["--hardware", "--model.preset=tiny", "--model.pos_emb=rope", "--model.window=8", "--context", "32"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the decode split is timed only with threads to split over (OMP_NUM_THREADS=1: none)
    try:
        assert I.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert f"CPU: {hardware.cpu_model()}, {hardware.cpu_isa()}" in out
    assert "trains in fp32 here" in out  # the suite's GPTLAB_NATIVE_BF16=0
    assert "decode linear" in out and "cpu sliding window" in out
    assert "plain 1000.00 ms" in out
    autotune.reset()


def test_gptlab_log_debug_shows_the_choices_and_a_bad_level_is_one_line(monkeypatch, capsys):
    import logging

    from gptlab.cli import main

    autotune.reset()
    monkeypatch.setattr(autotune, "fastest_time", lambda name, fn: 1.0)
    monkeypatch.setenv("GPTLAB_LOG", "nonsense")
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "gptlab: error: GPTLAB_LOG=nonsense: use debug, info or warning\n"
    monkeypatch.setenv("GPTLAB_LOG", "debug")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as above: a choice to log needs threads to split over
    try:
        seen: list[str] = []
        monkeypatch.setattr(autotune.log, "debug", lambda msg, *args: seen.append(msg % args))
        assert main(["info", "--hardware", "--model.preset=tiny"]) == 0
        assert any(line.startswith("decode linear ((") and line.endswith("ms)") for line in seen)
    finally:
        root.handlers[:], root.level = handlers, level
        torch.set_num_threads(threads)
        autotune.reset()


def test_training_asks_malloc_to_keep_freed_memory(tmp_path, monkeypatch):
    import platform

    calls: list[bool] = []
    real = hardware.keep_freed_memory
    monkeypatch.setattr(hardware, "keep_freed_memory", lambda: calls.append(True) or real())
    assert T.main(_tiny_run(tmp_path, "run", "float32")) == 0
    assert calls == [True]
    assert real() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")  # and nowhere else


@pytest.mark.parametrize("model, kind", [
    ("Intel(R) Xeon(R) Processor @ 2.60GHz", "intel-xeon-avx-512-2t"),
    ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "intel-xeon-platinum-8481c-avx-512-2t"),
    ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "intel-core-i7-8700-avx-512-2t"),
    ("AMD EPYC", "amd-epyc-avx-512-2t"),
    ("AMD EPYC 7B13 64-Core Processor", "amd-epyc-7b13-64-core-avx-512-2t"),
])
def test_machine_kind_keeps_only_what_names_the_cpu(monkeypatch, model, kind):
    monkeypatch.setattr(hardware, "cpu_model", lambda: model)
    monkeypatch.setattr(hardware, "cpu_isa", lambda: "AVX-512")
    assert hardware.machine_kind(threads=2) == kind
