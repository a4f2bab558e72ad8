"""The serving scan alone: one user vector against the whole catalogue, then the top 10, in float32, bfloat16, int8.

    bin/python bench/scan.py [--items 1000000 4160000] [--calls 30]

Random item matrix of D = 64 (the default model's), torch's default threads; prints the median ms over --calls
calls (after 3 warm-up ones) of the scan (twots.mlops.scan.ItemScan), of torch.topk over its scores and of the
served model's block_topk, and the min of scan + block_topk. This is the part of a request that grows with the
catalogue (docs/serving.md). `build MB`: how far building the scan from the float32 matrix raised the process's peak
resident memory (Linux: VmHWM, reset through /proc/self/clear_refs before each build), the server's cost at load.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch

from twots.mlops.scan import ItemScan, block_topk


def timed_ms(call, calls: int) -> list[float]:
    times = []
    for n in range(calls + 3):
        started = time.perf_counter()
        call()
        if n >= 3:
            times.append((time.perf_counter() - started) * 1000)
    return times


def built_with_peak_mb(items: torch.Tensor, kind: str) -> tuple[ItemScan, float]:
    """The scan of `kind` and the MB its construction added to the peak resident memory."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # peak resident memory := resident memory now
    before = status_mb("VmRSS")
    scan = ItemScan(items, kind)
    return scan, status_mb("VmHWM") - before


def status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1)) / 1024


def measure(scan: ItemScan, user: torch.Tensor, calls: int) -> tuple[float, float, float, float]:
    """Median ms of the scan, topk and block_topk, and the min of scan + block_topk."""
    scores = scan(user)
    matmul = timed_ms(lambda: scan(user), calls)
    topk = timed_ms(lambda: scores.topk(10), calls)
    block = timed_ms(lambda: block_topk(scores, 10), calls)
    total = timed_ms(lambda: block_topk(scan(user), 10), calls)
    return statistics.median(matmul), statistics.median(topk), statistics.median(block), min(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000, 4_160_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{'items':>10} {'kind':>9} {'scan':>8} {'topk':>8} {'block_topk':>11} {'min total':>10} {'build MB':>9}  "
          f"(ms; {torch.get_num_threads()} threads)")
    for n in args.items:
        items = torch.randn(n, args.dim) * 0.1
        user = torch.randn(1, args.dim)
        for kind in ("float32", "bfloat16", "int8"):
            scan, build_mb = built_with_peak_mb(items, kind)
            matmul, topk, block, total = measure(scan, user, args.calls)
            del scan
            print(f"{n:>10,} {kind:>9} {matmul:>8.1f} {topk:>8.1f} {block:>11.1f} {total:>10.1f} {build_mb:>9,.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
