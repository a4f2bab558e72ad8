"""How often a rough scan (bfloat16, int8) answers with the exact top k, on a trained model's artifacts.

    bin/python bench/rough_scan.py --artifacts <a logged model's artifacts/artifacts folder> [--users 300] [--k 10]
        [--history 20]

Loads the served pyfunc (twots.mlops.pyfunc) from the model's artifacts (model.pt, users.parquet, items.parquet)
once per scan kind, sends the same requests to each (random known users, --history random recent items, k), and
compares every answer with the float32 scan's: the share of requests whose items are the same set, the share of the
float32 top k found (recall), and the largest score difference. The rough scans choose max(256, 4k) candidates and
rescore them in float32, so they differ only where a true top-k item falls outside that pool. Accuracy only: time it
with bench/serve.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from twots.mlops.pyfunc import RecommenderPyfunc


def load(artifacts: Path, scan: str) -> RecommenderPyfunc:
    model = RecommenderPyfunc()
    model.load_context(SimpleNamespace(
        artifacts={name: str(artifacts / f"{name}{suffix}")
                   for name, suffix in (("model", ".pt"), ("users", ".parquet"), ("items", ".parquet"))},
        model_config={"scan": scan, "max_k": 1000}))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--history", type=int, default=0, help="random recent items per request")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    users = pd.read_parquet(args.artifacts / "users.parquet")["raw_user_id"].astype(str).to_numpy()
    items = pd.read_parquet(args.artifacts / "items.parquet")["raw_item_id"].astype(str).to_numpy()
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(users, size=min(args.users, len(users)), replace=False)
    request = pd.DataFrame({"user_id": picked, "k": args.k,
                            "recent_items": [rng.choice(items, size=args.history).tolist() for _ in picked]})
    answers = {}
    for scan in ("float32", "bfloat16", "int8"):
        answers[scan] = load(args.artifacts, scan).predict(None, request)
        print(f"[rough_scan] {scan}: {len(request)} requests answered", flush=True)
    exact = answers["float32"]
    print(f"\n{len(request)} random users, k = {args.k}, {args.history} random recent items; against the float32 "
          "scan's answers:")
    print(f"{'scan':>9} {'same items':>11} {'recall':>8} {'max |score diff|':>17}")
    for scan in ("bfloat16", "int8"):
        got = answers[scan]
        same = [set(a) == set(b) for a, b in zip(got["items"], exact["items"])]
        recall = [len(set(a) & set(b)) / len(b) for a, b in zip(got["items"], exact["items"])]
        diff = max(np.abs(np.sort(a) - np.sort(b)).max() for a, b in zip(got["scores"], exact["scores"]))
        print(f"{scan:>9} {np.mean(same):>11.4f} {np.mean(recall):>8.4f} {diff:>17.2e}")


if __name__ == "__main__":
    main()
