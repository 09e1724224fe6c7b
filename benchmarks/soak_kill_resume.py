"""Soak test: SIGKILL a real `gptlab train` 20 times (about half of the kills in the middle of a checkpoint
write), resume after each, and check that no checkpoint is ever unreadable and that the final losses equal
an uninterrupted run's bit for bit. The default test suite does the same with 3 kills
(tests/test_reliability.py::test_sigkill_at_random_moments_then_resume_is_bit_identical).

    python benchmarks/soak_kill_resume.py [--kills=20] [--seed=0] [--slow_save=0.3]

Takes a few minutes on 2 CPU cores. Exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_reliability as R  # noqa: E402  (the helpers of the default test)

from gptlab import train as T  # noqa: E402
from gptlab.data import shakespeare_text  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow_save", type=float, default=0.3, help="GPTLAB_TEST_SLOW_SAVE seconds per pause")
    parser.add_argument("--iters", type=int, default=60, help="iterations of the run (a checkpoint every 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gptlab-soak-") as tmp:
        root = Path(tmp)
        (root / "input.txt").write_text(shakespeare_text()[:20_000], encoding="utf-8")
        n = {"trainer__max_iters": args.iters, "trainer__lr_decay_iters": args.iters}
        start = time.perf_counter()
        assert T.main(R.train_flags(root, root / "ref", **n)) == 0
        # Same helper as the default test, with a longer run so that 20 kills fit in it.
        orig = R.train_flags
        R.train_flags = lambda r, w, **kw: orig(r, w, **{**n, **kw})
        try:
            landed = R.kill_and_resume(root, root / "killed", kills=args.kills, seed=args.seed,
                                       slow_save=args.slow_save)
        finally:
            R.train_flags = orig
        same = R.metrics(root / "killed") == R.metrics(root / "ref")
        total = sum(landed.values())
        print(f"{total} kills ({landed['mid_write']} mid-write, {landed['elsewhere']} elsewhere) in "
              f"{time.perf_counter() - start:.0f} s; every checkpoint readable; final losses "
              + ("bit-identical to the uninterrupted run" if same else "DIFFER from the uninterrupted run"))
        ok = same and total == args.kills and landed["mid_write"] >= 1
        if total < args.kills:
            print(f"only {total} of {args.kills} kills landed before the run finished; raise --iters")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
