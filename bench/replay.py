"""The online replay's rate for saved models: the val replay of a tuning run's val check through each model.

    bin/python bench/replay.py RUN/runs/val/2.pkl RUN/runs/gru4rec/lr0.01-l20/gru4rec.pt \
        RUN/runs/sasrec/lr0.01-l20/sasrec.pt [--users 1000]

The first argument is the file a comparison's tuning writes for its per-epoch val check (ValMRR: the EvalData of
val, RUN/runs/val/<n>.pkl; the full-history baselines' is the one whose warm-up rows are max_len long), the others
twots.models.kinds.save_model files. Each model is replayed as the val check replays it (evaluate_loaded: 1 torch
thread, 1,024 users per call), on every user or on a --users sample. `cpu/s` divides by the process's CPU time: on a
shared, loaded box it estimates what one idle core would do, where `wall/s` counts the waiting too.
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np

from twots.evaluation.evaluate import EvalData, evaluate_loaded
from twots.models.kinds import load_model


def user_sample(data: EvalData, users: int, seed: int) -> EvalData:
    """The events of `users` users drawn at random (all of them when there are not more)."""
    present = np.unique(data.events.user_id)
    if users >= len(present):
        return data
    keep = np.isin(data.events.user_id, np.random.default_rng(seed).choice(present, users, replace=False))
    return EvalData(data.warmup, data.events.subset(keep), data.split[keep], data.activity,
                    None if data.is_repeat is None else data.is_repeat[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("val", help="a val check's pickled EvalData (RUN/runs/val/<n>.pkl)")
    parser.add_argument("models", nargs="+", help="saved models (save_model files)")
    parser.add_argument("--users", type=int, default=0, help="replay a sample of this many users (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    args = parser.parse_args()
    with open(args.val, "rb") as f:
        data = pickle.load(f)
    if args.users:
        data = user_sample(data, args.users, args.seed)
    events = len(data.events)
    rows = []
    for path in args.models:
        model = load_model(path)
        wall, cpu = time.perf_counter(), time.process_time()
        mrr = evaluate_loaded(model, data, ("val",))["metrics"]["val"]["overall"]["mrr"]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append(f"| {path[-60:]:60} | {mrr:8.4f} | {events / wall:8,.0f} | {events / cpu:8,.0f} |")
    print(f"{events:,} val events of {len(np.unique(data.events.user_id)):,} users")
    print(f"| {'model':60} | {'val MRR':>8} | {'wall/s':>8} | {'cpu/s':>8} |")
    print(f"|{'-' * 62}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    print("\n".join(rows))

if __name__ == "__main__":
    main()
