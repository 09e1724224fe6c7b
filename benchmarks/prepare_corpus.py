"""Benchmark `gptlab prepare`: MB/s and peak memory at 1 and 2 workers on a corpus of a given size.

The corpus is the offline Shakespeare text (gptlab.data.shakespeare_text(), 4.8 MB) repeated into one text file
of --mb megabytes: one long document, so it also exercises cutting documents into pieces. Each run is a real
`gptlab prepare` process; its memory is the resident set of it and its worker processes, sampled every 20 ms
from /proc (Linux): the peak of their summed RSS (pages shared between the forked workers counted in each)
and of their summed PSS (shared pages split between them: the memory they really take).

    python benchmarks/prepare_corpus.py --mb=100 [--workers=1,2]

MB/s is input megabytes (10^6 bytes) over the time `prepare` reports (without the interpreter's start-up);
CPU s is the user + system time of the process and its workers (getrusage), which other jobs on a shared
machine do not inflate the way they do the wall time.
The shards of every run must be identical; the script exits 1 if they are not. For scale, the last row is
tiktoken's encode_ordinary alone on the first 10 MB, in this process: the tokenizer's own speed on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gptlab.data import shakespeare_text
from gptlab.tokenizer import get_tokenizer


def cpu_model() -> str:
    """`lscpu`'s model name (Linux), else what platform knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat's parent field)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def _kib(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else 0


class PeakMemory(threading.Thread):
    """Samples the summed RSS and PSS of a process tree until stopped; peaks in MB."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop, self.rss, self.pss = pid, threading.Event(), 0.0, 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _tree(self.pid)
            rss = sum(_kib(Path(f"/proc/{p}/status"), "VmRSS") for p in pids)
            pss = sum(_kib(Path(f"/proc/{p}/smaps_rollup"), "Pss") for p in pids)
            self.rss, self.pss = max(self.rss, rss / 1000), max(self.pss, pss / 1000)
            time.sleep(0.02)


def run_prepare(corpus: Path, out: Path, workers: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "gptlab", "prepare", str(corpus), str(out), f"--workers={workers}",
           "--progress=False"]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(proc.pid)
    memory.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    memory.stop.set()
    memory.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped by prepare, are in its totals
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"gptlab prepare failed: {stderr.strip()}")
    m = re.search(r"([\d,]+) tokens .* in ([\d.]+) s", stdout)
    tokens, seconds = int(m.group(1).replace(",", "")), float(m.group(2))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.glob("*.bin")))).hexdigest()
    return {"seconds": seconds, "wall": wall, "cpu": cpu, "tokens": tokens, "rss": memory.rss, "pss": memory.pss,
            "digest": digest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100, help="corpus size in MB (10^6 bytes)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gptlab-prepare-bench-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        text = shakespeare_text().encode("utf-8")
        size = int(args.mb * 1e6)
        with open(corpus, "wb") as f:  # written in copies of the text: the script itself stays small too
            for _ in range(size // len(text)):
                f.write(text)
            f.write(text[: size % len(text)].rsplit(b"\n", 1)[0] + b"\n")
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {mb:.1f} MB (Shakespeare x {mb * 1e6 / len(text):.1f}), CPU: {cpu_model()}, "
              f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}")
        print("| workers | MB/s | tokens/s | seconds | CPU s | peak RSS, all processes (MB) | peak PSS (MB) |")
        print("|---|---|---|---|---|---|---|")
        digests = set()
        for workers in (int(w) for w in args.workers.split(",")):
            r = run_prepare(corpus, Path(tmp) / f"out{workers}", workers)
            digests.add(r["digest"])
            print(f"| {workers} | {mb / r['seconds']:.2f} | {r['tokens'] / r['seconds'] / 1e6:.2f}M | "
                  f"{r['seconds']:.1f} | {r['cpu']:.1f} | {r['rss']:.0f} | {r['pss']:.0f} |", flush=True)
        sample = text * (10_000_000 // len(text) + 1)
        sample = sample[:10_000_000].decode("utf-8", errors="ignore")
        encoding = get_tokenizer("gpt2").encoding
        start, cpu0 = time.perf_counter(), time.process_time()
        n = len(encoding.encode_ordinary(sample))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
        print(f"| tiktoken alone (10 MB, 1 thread) | {10 / seconds:.2f} | {n / seconds / 1e6:.2f}M | {seconds:.1f} "
              f"| {cpu:.1f} | | |")
        print(f"tokens: {r['tokens']:,}; shards identical across runs: {len(digests) == 1}")
        return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
