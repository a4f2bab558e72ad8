"""The serving scan alone: one user vector against the whole catalogue, then the top 10, in float32 and bfloat16.

    bin/python bench/scan.py [--items 1000000 4000000] [--calls 30]

Random item matrix of D = 64 (the default model's), torch's default threads; prints min and median ms over --calls
calls after 3 warm-up ones. This is the part of a request that grows with the catalogue (docs/serving.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{'items':>10} {'scan':>9} {'min ms':>8} {'median ms':>10}  ({torch.get_num_threads()} threads)")
    for n in args.items:
        items = torch.randn(n, args.dim) * 0.1
        user = torch.randn(1, args.dim)
        for dtype in (torch.float32, torch.bfloat16):
            matrix, vector = items.to(dtype), user.to(dtype)
            times = []
            for call in range(args.calls + 3):
                started = time.perf_counter()
                (vector @ matrix.T).topk(10)
                if call >= 3:
                    times.append((time.perf_counter() - started) * 1000)
            print(f"{n:>10,} {str(dtype).split('.')[1]:>9} {min(times):>8.1f} {statistics.median(times):>10.1f}",
                  flush=True)
            del matrix


if __name__ == "__main__":
    main()
