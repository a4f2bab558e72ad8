"""Prepare on generated Taobao-format data (1M and 10M rows by default): time per step, rows/s, peak memory.

    bin/python bench/prepare.py [--rows 1000000 10000000] [--runs 1] [--workdir bench-output/prepare]

Each size is generated once (`jobs/generate.py`, seed 7) (cached in the workdir), then `jobs/prepare.py` runs as its own process, as a user
would run it; peak memory is the largest resident set of that process tree (Python driver + JVM), sampled
every 0.2 s. Step times come from the run's manifest.json. Prints one table; medians when --runs > 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
STEPS = ["validate", "rejects", "users", "items", "interactions", "user_activity", "stage1_offers", "sequences",
         "eval_candidates"]


def run_measured(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run cmd; return (wall seconds, peak RSS of its process tree in GB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = []
    for line in proc.stdout:  # progress as it comes: a long run shows its finished steps
        log.append(line)
        if line.startswith("[prepare]"):
            print("   ", line, end="", flush=True)
    proc.wait()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(log)[-4000:]}")
    return time.perf_counter() - start, peak / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", default=str(REPO / "bench-output" / "prepare"))
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--eval-sample", default="0.1", help="fraction of users evaluated (499 negatives each)")
    args = parser.parse_args()
    work = Path(args.workdir)
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS": f"--master local[2] --driver-memory {args.driver_memory} pyspark-shell"}
    py = sys.executable
    results = []
    for rows in args.rows:
        data = work / f"taobao-{rows}"
        if not (data / "_generator.json").exists():
            gen_s, _ = run_measured([py, "jobs/generate.py", "--rows", str(rows), "--output", str(data)], env)
            print(f"generated {rows:,} rows in {gen_s:.0f}s", flush=True)
        walls, peaks, steps = [], [], {s: [] for s in STEPS}
        for run in range(args.runs):
            out = work / f"prepared-{rows}"
            wall, peak = run_measured([py, "jobs/prepare.py", "--source", "taobao", "--input", str(data),
                                       "--output", str(out), "--eval-sample", args.eval_sample], env)
            timings = json.loads((out / "manifest.json").read_text())["timings_s"]
            walls.append(wall)
            peaks.append(peak)
            for s in STEPS:
                steps[s].append(timings[s])
            print(f"rows {rows:,} run {run + 1}: {wall:.0f}s, peak {peak:.1f} GB", flush=True)
        results.append((rows, statistics.median(walls), max(peaks), {s: statistics.median(v) for s, v in steps.items()}))

    load = os.getloadavg()[0]
    print(f"\nprepare on generated Taobao-format data: {os.cpu_count()}-core CPU, local[2], "
          f"{args.runs} run(s) per size (median), eval_sample {args.eval_sample}, load average at the end {load:.1f}")
    header = ["step"] + [f"{rows / 1e6:g}M rows" for rows, *_ in results]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for s in STEPS:
        print(f"| {s} | " + " | ".join(f"{r[3][s]:.1f} s" for r in results) + " |")
    print("| JVM start, manifest, exit |" + " | ".join(f"{r[1] - sum(r[3].values()):.1f} s" for r in results) + " |")
    print("| total (process wall) | " + " | ".join(f"{r[1]:.0f} s" for r in results) + " |")
    print("| rows/s | " + " | ".join(f"{r[0] / r[1]:,.0f}" for r in results) + " |")
    print("| peak RSS (driver + JVM) | " + " | ".join(f"{r[2]:.1f} GB" for r in results) + " |")


if __name__ == "__main__":
    main()
