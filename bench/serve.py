"""Serving figures: latency p50/p99 and requests/s of the real `mlflow models serve` at catalogues of 10k, 100k and
1M items, and batch-recommend throughput (users/s). Prints two tables.

    bin/python bench/serve.py [--items 10000 100000 1000000] [--requests 300] [--runs 3]

Each catalogue gets synthetic Delta tables (users, user_activity, items, interactions with raw ids) and a random
2TS model of the default dimensions (D = 64), logged through `twots.mlops.packaging.log_model` and registered
@champion in
a sqlite registry under --workdir. A request is one known user (half of them active) with --history recent items
and k=10, as JSON `dataframe_records`, sent one at a time (latency) and from --clients threads (requests/s).
Latency is client-side wall time, server and client on the same box. Medians over --runs runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import torch

from twots.config import resolve
from twots.mlops.batch import RecommendConfig, batch_recommend
from twots.mlops.packaging import log_model
from twots.mlops.pyfunc import ServeConfig
from twots.mlops.registry import use_registry
from twots.mlops.server import local_server
from twots.models.two_time_scale import TwoTimeScaleModel
from twots.spark import get_spark


def synthetic_tables(spark, data: Path, n_users: int, n_items: int, clicks_per_user: int) -> None:
    from pyspark.sql import functions as F

    from twots.data.delta import write_table

    users = spark.range(n_users).select(F.col("id").cast("int").alias("user_id"),
                                        F.concat(F.lit("u"), F.col("id")).alias("raw_user_id"))
    write_table(users, str(data / "users"))
    write_table(users.select("user_id", F.lit(clicks_per_user).alias("n_train"),
                             (F.col("user_id") % 2 == 0).alias("is_active")), str(data / "user_activity"))
    write_table(spark.range(n_items).select(
        F.col("id").cast("int").alias("item_id"), F.concat(F.lit("i"), F.col("id")).alias("raw_item_id"),
        F.array().cast("array<int>").alias("feature_ids"), F.array().cast("array<string>").alias("raw_features")),
        str(data / "items"))
    clicks = spark.range(n_users * clicks_per_user).select(
        F.col("id").alias("event_id"), (F.col("id") % n_users).cast("int").alias("user_id"),
        (F.hash("id") % n_items).cast("int").alias("item_id"))
    write_table(clicks.select("event_id", "user_id", F.abs("item_id").alias("item_id"), F.col("event_id").alias("ts"),
                              F.lit("train").alias("split"), F.array().cast("array<int>").alias("feature_ids")),
                str(data / "interactions"))


def register_synthetic(spark, client, experiment: str, data: Path, n_users: int, n_items: int, history: int,
                       scan: str) -> str:
    """Synthetic tables under `data` and a random 2TS model of the default dimensions on them, logged in
    `experiment` with the given full-catalogue scan and registered @champion as twots-bench-<n_items>; its URI."""
    synthetic_tables(spark, data, n_users, n_items, clicks_per_user=history)
    torch.manual_seed(0)
    model = TwoTimeScaleModel(n_users=n_users, n_items=n_items).eval()
    name = f"twots-bench-{n_items}"
    with mlflow.start_run(experiment_id=experiment):
        info = log_model(model, str(data), kind="2ts", spark=spark, registered_model_name=name,
                         limits=resolve(ServeConfig, "serve", {"scan": scan}))
    client.set_registered_model_alias(name, "champion", info.registered_model_version)
    return f"models:/{name}@champion"


def post(url: str, body: bytes) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        json.loads(response.read())
    return time.perf_counter() - started


def requests_for(n_users: int, n_items: int, count: int, history: int, seed: int,
                 user_id: Callable[[int], str] = "u{}".format,
                 item_id: Callable[[int], str] = "i{}".format) -> list[bytes]:
    """`count` request bodies: a random user of `n_users` and `history` random items of `n_items`, as raw ids
    (`user_id(u)`, `item_id(i)`: the synthetic tables' by default)."""
    rng = np.random.default_rng(seed)
    return [json.dumps({"dataframe_records": [{
        "user_id": user_id(int(rng.integers(n_users))), "k": 10,
        "recent_items": [item_id(int(i)) for i in rng.integers(n_items, size=history)]}]}).encode()
        for _ in range(count)]


def measure(url: str, bodies: list[bytes], clients: int) -> dict:
    for body in bodies[:20]:  # warm-up
        post(url, body)
    latencies = np.array([post(url, body) for body in bodies]) * 1000
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda body: post(url, body), bodies))
    return {"p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
            "rps_1": 1000 / float(latencies.mean()), "rps_n": len(bodies) / (time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=10_000, help="users of the synthetic tables")
    parser.add_argument("--history", type=int, default=20, help="recent items per request")
    parser.add_argument("--requests", type=int, default=300, help="requests per run")
    parser.add_argument("--clients", type=int, default=4, help="client threads for requests/s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-users", type=int, default=2_000, help="users scored by batch recommend")
    parser.add_argument("--batch-items", type=int, nargs="+", default=[10_000, 100_000],
                        help="catalogue sizes (of --items) for batch recommend")
    parser.add_argument("--scan", default="float32", choices=("float32", "bfloat16", "int8"),
                        help="the served model's full-catalogue scan (serve.scan)")
    parser.add_argument("--workdir", default="bench-output/serve")
    args = parser.parse_args()

    spark = get_spark("bench-serve", master="local[2]", conf={"spark.sql.shuffle.partitions": "4",
                                                              "spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    workdir = Path(args.workdir).resolve()
    tracking = f"sqlite:///{workdir}/mlflow.db"
    workdir.mkdir(parents=True, exist_ok=True)
    client = use_registry(tracking, None, str(workdir))
    experiment = (mlflow.get_experiment_by_name("bench-serve") or mlflow.get_experiment(mlflow.create_experiment(
        "bench-serve", artifact_location=(workdir / "artifacts").as_uri()))).experiment_id

    online, batch = [], []
    for n_items in args.items:
        data = workdir / f"items-{n_items}"
        uri = register_synthetic(spark, client, experiment, data, args.users, n_items, args.history, args.scan)
        runs = []
        with local_server(uri, tracking_uri=tracking, timeout_s=600) as url:
            for run in range(args.runs):
                bodies = requests_for(args.users, n_items, args.requests, args.history, seed=run)
                runs.append(measure(f"{url}/invocations", bodies, args.clients))
                print(f"[serve] {n_items:,} items run {run + 1}: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in runs[-1].items()), flush=True)
        online.append((n_items, {key: statistics.median(r[key] for r in runs) for key in runs[0]}))

        if n_items in args.batch_items:
            rates = []
            for _ in range(args.runs):
                cfg = RecommendConfig(data=str(data), output=str(data / "recommendations"), model_uri=uri, k=10,
                                      users=[f"u{u}" for u in range(args.batch_users)])
                started = time.perf_counter()
                batch_recommend(spark, cfg)
                rates.append(args.batch_users / (time.perf_counter() - started))
            batch.append((n_items, statistics.median(rates)))

    load = os.getloadavg()[0]
    print(f"\nOnline: mlflow models serve (1 worker), {args.scan} scan, {args.history} recent items, k=10, "
          f"{args.requests} requests x {args.runs} runs, medians; {os.cpu_count()} CPUs, 1-minute system load "
          f"{load:.1f}")
    print(f"{'items':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/s (1 client)':>17} {f'req/s ({args.clients} clients)':>17}")
    for n_items, r in online:
        print(f"{n_items:>10,} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['rps_1']:>17.1f} {r['rps_n']:>17.1f}")
    if batch:
        print(f"\nBatch recommend (Spark local[2], pyfunc spark_udf, k=10, {args.batch_users:,} users, "
              f"history {args.history}), median of {args.runs}")
        print(f"{'items':>10} {'users/s':>10}")
        for n_items, rate in batch:
            print(f"{n_items:>10,} {rate:>10.1f}")


if __name__ == "__main__":
    main()
