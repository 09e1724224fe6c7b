"""Fast paths chosen by measurement, on the machine that runs them (like torch.backends.cudnn.benchmark).

A CPU fast path that wins on one processor can lose on another: the decode GEMV split was 2x transformers on
AMD EPYC and 0.53x on an Intel Xeon with AMX. So no such choice is made by hand. The first time an operation
meets a shape, `choose` times every candidate on it (the plain op it replaces always among them), keeps the
fastest for the rest of the process and logs the decision (logger "gptlab.autotune"; `gptlab info --hardware`
lists them). A fast path must beat the plain op by `MARGIN` to be picked, so timing noise cannot trade the
plain op for something no faster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

import torch

log = logging.getLogger(__name__)

PLAIN = "plain"  # every choice's reference candidate: the op the fast paths replace
MARGIN = 0.05  # a fast path is picked only when it is at least this much faster than the plain op

Timer = Callable[[str, Callable[[], object]], float]  # (candidate name, run it once) -> seconds per run

_choices: dict[tuple[str, str], str] = {}  # (op, repr(key)) -> chosen candidate
_timings: dict[tuple[str, str], dict[str, float]] = {}


def _run_times(fn: Callable[[], object], warmups: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` runs of fn(), after `warmups` untimed ones (the first call allocates)."""
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def fastest_time(name: str, fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of `repeats` runs of fn() after one warm-up. The minimum, not the mean: other work on the machine
    only ever adds time."""
    return min(_run_times(fn, 1, repeats))


def median_time(name: str, fn: Callable[[], object], repeats: int = 5) -> float:
    """Median of `repeats` runs of fn() after two warm-ups: for a candidate whose speed depends on how the
    allocator serves its large temporaries, the fastest run can be far from the typical one."""
    return sorted(_run_times(fn, 2, repeats))[repeats // 2]


def choose(
    op: str, key: Hashable, candidates: dict[str, Callable[[], object]], timer: Timer | None = None
) -> str:
    """Name of the fastest candidate for (op, key): timed on the first call, remembered for the process.

    candidates maps names to zero-argument callables that run the op once on inputs of the shape in question;
    one of them must be PLAIN. Inside torch.compile's tracing nothing can be timed: the plain op is used unless a
    choice was already made eagerly.
    """
    if PLAIN not in candidates:
        raise ValueError(f"{op}: the candidates must include the plain op ({PLAIN!r}), got {sorted(candidates)}")
    k = (op, repr(key))
    if k in _choices and _choices[k] in candidates:
        return _choices[k]
    if torch.compiler.is_compiling():
        return PLAIN
    timer = timer or fastest_time  # looked up per call, so tests can replace it
    # Timing must not move torch's RNG: it is the dropout stream a checkpoint saves, and resume is bit-exact.
    with torch.random.fork_rng(devices=[]):
        times = {name: timer(name, fn) for name, fn in candidates.items()}
    best = min(times, key=times.__getitem__)
    if times[best] > times[PLAIN] * (1 - MARGIN):
        best = PLAIN
    _choices[k], _timings[k] = best, times
    log.debug("%s %s: %s (%s)", op, k[1], best, ", ".join(f"{n} {t * 1e3:.3f} ms" for n, t in times.items()))
    return best


def choose_path(op: str, key: Hashable, paths: dict[str, Callable[..., torch.Tensor]],
                like: tuple[torch.Tensor | None, ...], grad: bool, *args: object, timer: Timer | None = None) -> str:
    """choose() among paths path(*inputs, *args): each run on random inputs shaped like `like` (None stays None),
    forward and, when autograd will need it, backward into every input, on detached copies, so the timing leaves no
    gradient behind."""
    g = torch.Generator(like[0].device).manual_seed(0)  # private: the global RNG is the dropout stream
    inputs = [None if x is None else torch.empty_like(x).normal_(generator=g) for x in like]

    def timed(path: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            y = path(*(None if x is None else x.detach().requires_grad_(grad) for x in inputs), *args)
            if grad:
                y.backward(torch.ones_like(y))

        return run

    return choose(op, key, {name: timed(path) for name, path in paths.items()}, timer)


def choice(op: str, key: Hashable) -> str | None:
    """The candidate chosen (or pinned) for (op, key) in this process, None before the first choose(): a hot path
    looks here first and builds its candidates only when there is something to time."""
    return _choices.get((op, repr(key)))


def choices() -> list[tuple[str, str, str, dict[str, float]]]:
    """Every choice in this process: (op, repr(key), chosen candidate, seconds per candidate; empty if pinned)."""
    return [(op, key, best, _timings.get((op, key), {})) for (op, key), best in _choices.items()]


def pinned() -> list[list[str]]:
    """The choices as JSON-able [op, repr(key), candidate] rows, for a checkpoint."""
    return [[op, key, best] for (op, key), best in _choices.items()]


def pin(rows: list[list[str]]) -> None:
    """Make the choices of an earlier process again (from pinned()): the paths differ in rounding, so a resumed
    run must use the kernels the interrupted one used to continue it to the bit."""
    for op, key, best in rows:
        _choices[(op, key)] = best


def reset() -> None:
    """Forget every choice (tests; or after changing the thread count)."""
    _choices.clear()
    _timings.clear()
