"""Serving figures through the real `mlflow models serve`, two ways. Latency is client-side wall time, server and
client on the same box; a request is one user as JSON `dataframe_records`, sent one at a time (p50, p99, req/s) and
from --clients threads (req/s).

Side by side on a trained model (--trained): the exact float32 scan, the rough scans (bfloat16, int8) and the faiss
indexes (flat, ivf, hnsw) over the same catalogue, with recall@10 and recall@100 against the float32 scan's answers,
the index's build time and size and the model's artifacts.

    bin/python bench/serve.py --trained <saved model .pt> --data <the prepared tables it was trained on>
        [--kind 2ts-oos] [--items 1000000 4160000] [--states 1000] [--history 20] [--noise 0.5]
        [--methods float32 bfloat16 int8 flat ivf hnsw] [--config FILE]

The catalogue is the trained one widened to each --items with copies of trained items (`widened`: a random
parent's feature ids and its x_i plus noise of --noise times each dimension's spread), so the vectors an index is
built on are trained ones and their neighbours, not random ones. The requests are --states random users of --data
with their last --history clicks (raw ids, exclude_clicked by default): the server replays each to a real user
state. Each method's model is saved as log_model would log it (`twots.mlops.packaging.served_model`, the serve:
section of conf/default.yaml and --config, the method as serve.index or serve.scan), served, measured and deleted.

Random models on synthetic tables (the default): latency at catalogues of 10k, 100k and 1M items and batch-recommend
throughput (users/s).

    bin/python bench/serve.py [--items 10000 100000 1000000] [--requests 300] [--runs 3] [--scan float32]
        [--index scan]

Each catalogue gets synthetic Delta tables (users, user_activity, items, interactions with raw ids) and a random
2TS model of the default dimensions (D = 64), logged through `twots.mlops.packaging.log_model` and registered
@champion in a sqlite registry under --workdir. A request is one known user (half of them active) with --history
random recent items and k=10. Medians over --runs runs. Random vectors are no test of an index's recall, so this mode
serves by the scan unless --index says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from twots.config import resolve
from twots.mlops.batch import RecommendConfig, batch_recommend, recent_histories
from twots.mlops.packaging import log_model, read_id_maps, served_model
from twots.mlops.pyfunc import ServeConfig
from twots.mlops.registry import use_registry
from twots.mlops.server import local_server
from twots.models.items import ItemEncoder
from twots.models.kinds import KINDS, load_model
from twots.models.two_time_scale import TwoTimeScaleModel
from twots.spark import get_spark

SCANS = ("float32", "bfloat16", "int8")
INDEXES = ("flat", "ivf", "hnsw")
RECALL_ROWS = 50  # rows per request of the k = 100 pass (recall@100 only, not timed)


# ---------------------------------------------------------------- requests

def post(url: str, body: bytes) -> tuple[float, list]:
    """Seconds the request took and the answer's predictions."""
    started = time.perf_counter()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, answer["predictions"]


def measure(url: str, bodies: list[bytes], clients: int) -> tuple[dict, list]:
    """p50 and p99 ms of the bodies sent one at a time, requests/s from one and from `clients` threads; and the
    answers of the one-at-a-time pass, a list of predictions per body."""
    for body in bodies[:20]:  # warm-up
        post(url, body)
    latencies, answers = zip(*(post(url, body) for body in bodies))
    latencies = np.array(latencies) * 1000
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda body: post(url, body), bodies))
    return {"p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
            "rps_1": 1000 / float(latencies.mean()), "rps_n": len(bodies) / (time.perf_counter() - started)}, answers


# ---------------------------------------------------------------- side by side on a trained model

def widened(model, n_items: int, noise: float, seed: int):
    """`model` over n_items items: its own first, then copies of items drawn uniformly (the parents). A copy takes
    its parent's feature ids (so the same g(f_i)) and its parent's x_i (and b_i) plus Gaussian noise of `noise` times
    that dimension's standard deviation over the trained items: new items of the trained items' categories."""
    trained = model.hparams["n_items"]
    if n_items < trained:
        raise SystemExit(f"--items {n_items}: below the trained catalogue ({trained:,} items)")
    encoders = [name for name, module in model.named_modules() if isinstance(module, ItemEncoder)]
    if not encoders:
        raise SystemExit(f"a {type(model).__name__} has no item encoder to widen")
    generator = torch.Generator().manual_seed(seed)
    parents = torch.cat([torch.arange(trained), torch.randint(trained, (n_items - trained,), generator=generator)])
    state = model.state_dict()
    per_item = ("item.weight", "bias.weight", "item_features")
    for key in (f"{encoder}.{part}" for encoder in encoders for part in per_item):
        if key in state:
            grown = state[key][parents]
            if grown.is_floating_point():
                spread = state[key].std(dim=0)
                grown[trained:] += torch.randn(grown[trained:].shape, generator=generator) * noise * spread
            state[key] = grown
    wide = type(model)(**{**model.hparams, "n_items": n_items})
    wide.load_state_dict(state)
    return wide.eval()


def replayed_users(spark, data: str, count: int, history: int, seed: int) -> list[dict]:
    """`count` random users of the tables with at least one click, each with their last `history` clicks (any
    split, oldest first) as raw ids: request rows whose state the served model replays."""
    from twots.data.delta import read_table
    from twots.data.tables import INTERACTIONS, ITEMS, USERS

    read = lambda table: read_table(spark, f"{data}/{table}")  # noqa: E731
    rows = recent_histories(read(INTERACTIONS), read(USERS), read(ITEMS), history).toPandas()
    rows = rows[rows["recent_items"].map(len) > 0].sort_values("user_id", ignore_index=True)
    picked = rows.sample(n=min(count, len(rows)), random_state=seed)
    return [{"user_id": user, "recent_items": list(items)} for user, items in zip(picked.user_id, picked.recent_items)]


def recall(answers: list, exact: list, k: int) -> float:
    """Mean share of each exact top k found in the answer's top k."""
    return float(np.mean([len(set(a["items"][:k]) & set(e["items"][:k])) / len(e["items"][:k])
                          for a, e in zip(answers, exact)]))


def served_figures(model_dir: Path, states: list[dict], clients: int) -> tuple[dict, list, list]:
    """Figures of the saved model through `mlflow models serve`, and its answers for every state with k = 10 (the
    timed ones, one at a time) and with k = 100 (RECALL_ROWS to a request)."""
    single = [json.dumps({"dataframe_records": [{**state, "k": 10}]}).encode() for state in states]
    batches = [json.dumps({"dataframe_records": [{**state, "k": 100} for state in states[at:at + RECALL_ROWS]]})
               .encode() for at in range(0, len(states), RECALL_ROWS)]
    started = time.perf_counter()
    with local_server(str(model_dir), timeout_s=1800) as url:
        ready = time.perf_counter() - started
        figures, top10 = measure(f"{url}/invocations", single, clients)
        top100 = [row for body in batches for row in post(f"{url}/invocations", body)[1]]
    return {**figures, "ready_s": ready}, [answer[0] for answer in top10], top100


def method_row(args, model, users: pd.DataFrame, catalogue: pd.DataFrame, method: str,
               states: list[dict]) -> tuple[dict, list, list]:
    """One method over one catalogue: its model saved as log_model would log it, served and measured with the
    states' requests; the figures, the k = 10 and the k = 100 answers."""
    limits = resolve(ServeConfig, "serve", {"config": args.config, "max_history": max(500, args.history),
                                            "index": method if method in INDEXES else "scan",
                                            "scan": method if method in SCANS else "float32"})
    model_dir = args.workdir / f"items-{len(catalogue)}" / method
    shutil.rmtree(model_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        mlflow.pyfunc.save_model(str(model_dir), **served_model(model, users, catalogue, Path(tmp), kind=args.kind,
                                                                 data=str(args.data), limits=limits))
    metadata = mlflow.models.Model.load(str(model_dir)).metadata
    index_file = model_dir / "artifacts" / "index.faiss"
    row = {"items": len(catalogue), "method": method, "build_s": metadata.get("index_build_s"),
           "index_mb": index_file.stat().st_size / 2**20 if index_file.exists() else None,
           "model_mb": sum(f.stat().st_size for f in (model_dir / "artifacts").rglob("*") if f.is_file()) / 2**20}
    figures, top10, top100 = served_figures(model_dir, states, args.clients)
    if not args.keep:
        shutil.rmtree(model_dir)
    return {**row, **figures}, top10, top100


def side_by_side(args) -> None:
    # save_model's two notes, once a method: no input example, the pyfunc pickled
    warnings.filterwarnings("ignore", message=".*An input example was not provided")
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    spark = get_spark("bench-serve", master="local[2]", conf={"spark.sql.shuffle.partitions": "4",
                                                              "spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    users, items = read_id_maps(spark, args.data)
    states = replayed_users(spark, args.data, args.states, args.history, args.seed)
    trained = load_model(args.trained)
    print(f"[serve] {args.trained}: {trained.hparams['n_items']:,} trained items; {len(states)} users of "
          f"{args.data} with their last {args.history} clicks", flush=True)
    rows = []
    for n_items in args.items:
        model = widened(trained, n_items, args.noise, args.seed)
        catalogue = pd.concat([items, pd.DataFrame({
            "item_id": np.arange(len(items), n_items, dtype=items["item_id"].dtype),
            "raw_item_id": [f"copy-{i}" for i in range(len(items), n_items)]})], ignore_index=True)
        for method in args.methods:  # float32 first: the exact answers
            row, top10, top100 = method_row(args, model, users, catalogue, method, states)
            if method == "float32":
                exact = top10, top100
            rows.append({**row, "recall_10": recall(top10, exact[0], 10), "recall_100": recall(top100, exact[1], 100)})
            print(f"[serve] {n_items:,} items, {method}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in rows[-1].items() if isinstance(v, float)), flush=True)
    print(f"\nSide by side: mlflow models serve (1 worker), {args.kind} {args.trained} widened by copies (noise "
          f"{args.noise}); {len(states)} users, their last {args.history} clicks, k = 10 one at a time "
          f"(p50, p99, req/s) and from {args.clients} threads; recall against the float32 scan's answers; "
          f"{os.cpu_count()} CPUs, 1-minute system load {os.getloadavg()[0]:.1f}")
    print(f"{'items':>10} {'method':>9} {'build s':>8} {'index MB':>9} {'model MB':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'req/s':>6} {f'req/s x{args.clients}':>9} {'recall@10':>9} {'recall@100':>10}")
    shown = lambda value, width: "-".rjust(width) if value is None else f"{value:{width}.1f}"  # noqa: E731
    for r in rows:
        print(f"{r['items']:>10,} {r['method']:>9} {shown(r['build_s'], 8)} {shown(r['index_mb'], 9)} "
              f"{r['model_mb']:>9.1f} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['rps_1']:>6.1f} {r['rps_n']:>9.1f} "
              f"{r['recall_10']:>9.4f} {r['recall_100']:>10.4f}")


# ---------------------------------------------------------------- random models on synthetic tables

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
                       scan: str, index: str) -> str:
    """Synthetic tables under `data` and a random 2TS model of the default dimensions on them, logged in
    `experiment` with the given scan and index (serve.scan, serve.index) and registered @champion as
    twots-bench-<n_items>; its URI."""
    synthetic_tables(spark, data, n_users, n_items, clicks_per_user=history)
    torch.manual_seed(0)
    model = TwoTimeScaleModel(n_users=n_users, n_items=n_items).eval()
    name = f"twots-bench-{n_items}"
    with mlflow.start_run(experiment_id=experiment):
        info = log_model(model, str(data), kind="2ts", spark=spark, registered_model_name=name,
                         limits=resolve(ServeConfig, "serve", {"scan": scan, "index": index}))
    client.set_registered_model_alias(name, "champion", info.registered_model_version)
    return f"models:/{name}@champion"


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


def synthetic(args) -> None:
    spark = get_spark("bench-serve", master="local[2]", conf={"spark.sql.shuffle.partitions": "4",
                                                              "spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    workdir = args.workdir
    tracking = f"sqlite:///{workdir}/mlflow.db"
    client = use_registry(tracking, None, str(workdir))
    experiment = (mlflow.get_experiment_by_name("bench-serve") or mlflow.get_experiment(mlflow.create_experiment(
        "bench-serve", artifact_location=(workdir / "artifacts").as_uri()))).experiment_id

    online, batch = [], []
    for n_items in args.items:
        data = workdir / f"items-{n_items}"
        uri = register_synthetic(spark, client, experiment, data, args.users, n_items, args.history, args.scan,
                                 args.index)
        runs = []
        with local_server(uri, tracking_uri=tracking, timeout_s=600) as url:
            for run in range(args.runs):
                bodies = requests_for(args.users, n_items, args.requests, args.history, seed=run)
                runs.append(measure(f"{url}/invocations", bodies, args.clients)[0])
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
    print(f"\nOnline: mlflow models serve (1 worker), index {args.index}, {args.scan} scan, {args.history} recent "
          f"items, k=10, {args.requests} requests x {args.runs} runs, medians; {os.cpu_count()} CPUs, 1-minute system "
          f"load {load:.1f}")
    print(f"{'items':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/s (1 client)':>17} {f'req/s ({args.clients} clients)':>17}")
    for n_items, r in online:
        print(f"{n_items:>10,} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['rps_1']:>17.1f} {r['rps_n']:>17.1f}")
    if batch:
        print(f"\nBatch recommend (Spark local[2], pyfunc spark_udf, k=10, {args.batch_users:,} users, "
              f"history {args.history}), median of {args.runs}")
        print(f"{'items':>10} {'users/s':>10}")
        for n_items, rate in batch:
            print(f"{n_items:>10,} {rate:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", help="catalogue sizes (default: 10k, 100k, 1M synthetic; "
                        "1M, 4.16M with --trained)")
    parser.add_argument("--history", type=int, default=20, help="recent items per request")
    parser.add_argument("--clients", type=int, default=4, help="client threads for requests/s")
    parser.add_argument("--workdir", type=Path, default=Path("bench-output/serve"))
    trained = parser.add_argument_group("side by side on a trained model")
    trained.add_argument("--trained", help="a saved model (twots.models.kinds.save_model: a training run's "
                         "<kind>.pt or a logged model's artifacts/model.pt)")
    trained.add_argument("--data", help="the prepared tables it was trained on (its users, items, interactions)")
    trained.add_argument("--kind", default="2ts-oos", choices=list(KINDS), help="its model kind")
    trained.add_argument("--states", type=int, default=1000, help="users replayed (requests per pass)")
    trained.add_argument("--noise", type=float, default=0.5, help="a copy's noise, times each dimension's spread")
    trained.add_argument("--methods", nargs="+", default=[*SCANS, *INDEXES], choices=[*SCANS, *INDEXES])
    trained.add_argument("--config", help="YAML with a serve: section over conf/default.yaml (e.g. ivf_nprobe)")
    trained.add_argument("--seed", type=int, default=0)
    trained.add_argument("--keep", action="store_true", help="keep each method's saved model under --workdir")
    synthetic_args = parser.add_argument_group("random models on synthetic tables")
    synthetic_args.add_argument("--users", type=int, default=10_000, help="users of the synthetic tables")
    synthetic_args.add_argument("--requests", type=int, default=300, help="requests per run")
    synthetic_args.add_argument("--runs", type=int, default=3)
    synthetic_args.add_argument("--batch-users", type=int, default=2_000, help="users scored by batch recommend")
    synthetic_args.add_argument("--batch-items", type=int, nargs="+", default=[10_000, 100_000],
                                help="catalogue sizes (of --items) for batch recommend")
    synthetic_args.add_argument("--scan", default="float32", choices=SCANS, help="serve.scan of the served model")
    synthetic_args.add_argument("--index", default="scan", choices=["scan", "auto", *INDEXES],
                                help="serve.index of the served model")
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.trained is None:
        args.items = args.items or [10_000, 100_000, 1_000_000]
        synthetic(args)
        return
    if args.data is None or "float32" not in args.methods:
        parser.error("--trained needs --data, and float32 among --methods (the exact answers)")
    args.items = args.items or [1_000_000, 4_160_000]
    args.methods = ["float32", *dict.fromkeys(m for m in args.methods if m != "float32")]
    side_by_side(args)


if __name__ == "__main__":
    main()
