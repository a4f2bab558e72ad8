"""Compute cost of the models alone (one process, no data loading, no gradient sync): stage-1 and stage-2 training
steps and the online replay, on generated ids. Prints a table of medians over --repeats runs.

    bin/python bench/models.py --threads 1            # CPU, one thread
    bin/python bench/models.py --device cuda          # GPU

`cpu/s` divides by the process's CPU time: on a shared, loaded box it estimates what one idle core would do,
where `wall/s` counts the waiting too.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from twots.evaluation.replay import Events, Warmup, replay
from twots.models.stage1 import Stage1Model
from twots.models.two_time_scale import TwoTimeScaleModel, TwoTimeScaleOptions
from twots.training.trainer import split_parameters


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def optimizers(model):
    sparse, dense = split_parameters(model)
    return ([torch.optim.SparseAdam(sparse, lr=0.01)] if sparse else []) + \
        ([torch.optim.Adam(dense, lr=0.01)] if dense else [])


def train_steps(model, batches):
    opts = optimizers(model)

    def run():
        for batch in batches:
            for opt in opts:
                opt.zero_grad()
            model(batch).backward()
            for opt in opts:
                opt.step()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--max-features", type=int, default=10)
    parser.add_argument("--negatives", type=int, default=10, help="p, negatives per training offer set")
    parser.add_argument("--stage1-batch", type=int, default=1024)
    parser.add_argument("--stage2-batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=20, help="stage-2 sequence length (max(K, t*))")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run")
    parser.add_argument("--events", type=int, default=20_000, help="replayed events per timed run")
    parser.add_argument("--eval-negatives", type=int, default=499)
    parser.add_argument("--batch-users", type=int, default=256, help="replay scoring chunk")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rng = np.random.default_rng(0)

    def ids(high, *shape):
        return torch.randint(0, high, shape, generator=gen).to(device)

    stage1 = Stage1Model(args.users, args.items, args.features, args.max_features)
    stage1.items.set_item_features(torch.randint(-1, args.features, (args.items, args.max_features), generator=gen))
    stage1.set_known_users(torch.ones(args.users, dtype=torch.bool))
    stage1.to(device)
    b1, p = args.stage1_batch, args.negatives
    batches1 = [{"user_id": ids(args.users, b1), "item_id": ids(args.items, b1),
                 "neg_item_ids": ids(args.items, b1, p)} for _ in range(args.steps)]

    model = TwoTimeScaleModel.from_stage1(stage1, TwoTimeScaleOptions(plus=True))
    b2, length = args.stage2_batch, args.length
    batches2 = []
    for _ in range(args.steps):
        items = ids(args.items, b2, length)
        lengths = ids(length, b2) + 1
        items[torch.arange(length, device=device)[None] >= lengths[:, None]] = -1
        batches2.append({"user_id": ids(args.users, b2), "is_active": ids(2, b2).bool(), "item_ids": items,
                         "neg_item_ids": ids(args.items, b2, length, p), "prev_item_id": ids(args.items, b2)})
    stage2_clicks = sum(int((b["item_ids"] >= 0).sum()) for b in batches2)

    n = args.events
    events = Events(rng.integers(0, args.users // 10, n), rng.integers(0, 10**6, n), np.arange(n),
                    rng.integers(0, args.items, n), rng.integers(0, args.items, (n, args.eval_negatives)))
    n_warm = args.users // 20
    warmup = Warmup(np.arange(n_warm), rng.random(n_warm) < 0.3, rng.integers(0, args.items, (n_warm, length)))

    cases = [
        ("stage 1 train step", "interactions", b1 * args.steps, train_steps(stage1, batches1)),
        ("stage 2 train step (2TS-Plus)", "interactions", stage2_clicks, train_steps(model, batches2)),
        (f"replay, {args.eval_negatives + 1} candidates", "events", n,
         lambda: replay(model, warmup, events, batch_users=args.batch_users)),
    ]
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.users} users, {args.items} items, "
          f"{args.features} features (<= {args.max_features} per item), D = 64, p = {p}; "
          f"median of {args.repeats} runs after one warm-up run")
    print(f"| {'what':34} | {'unit':12} | {'wall/s':>10} | {'cpu/s':>10} | {'min..max wall/s':>19} |")
    print(f"|{'-' * 36}|{'-' * 14}|{'-' * 12}|{'-' * 12}|{'-' * 21}|")
    for name, unit, count, fn in cases:
        timed(fn, device)
        runs = [timed(fn, device) for _ in range(args.repeats)]
        walls = [count / w for w, _ in runs]
        cpus = [count / c for _, c in runs]
        print(f"| {name:34} | {unit:12} | {statistics.median(walls):10.0f} | {statistics.median(cpus):10.0f} | "
              f"{min(walls):8.0f}..{max(walls):<9.0f} |", flush=True)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"peak host memory (max RSS) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
