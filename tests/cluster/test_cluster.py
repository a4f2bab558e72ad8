"""TorchDistributor with local_mode=False on a local cluster: the ranks are barrier tasks in two executor JVMs.

End to end (prepare -> train 2TS -> evaluate -> register -> validate), and the failure paths a cluster adds: a rank
that raises, ranks with uneven data, a collective that cannot complete.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import torch.distributed as dist
from pyspark import cloudpickle

from twots.config import resolve
from twots.mlops.registry import CHALLENGER, STATUS, RegistryConfig, connect, register, validate
from twots.training import distributed, loaders
from twots.training.config import TrainConfig
from twots.training.train import train

# The train functions below live in this test module, which the ranks cannot import: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

EXECUTOR = "CoarseGrainedExecutorBackend"


def executor_pid() -> int | None:
    """The pid of the Spark executor JVM this process descends from (None outside an executor)."""
    pid = os.getpid()
    while pid > 1:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if EXECUTOR in cmdline:
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def read_every_row(sources: list, batch: int) -> dict:
    """Each rank reads one epoch of each source; rank 0 gets every rank's executor and rows read."""
    ctx = distributed.setup(use_gpu=False)
    out = []
    for source in sources:
        loader = source.open(ctx.rank, ctx.world, batch, seed=1)
        rows = torch.cat([b["user_id"] for b in loader.epoch(0)]).tolist()
        out.append({"rows": rows, "steps": loader.steps_per_epoch, "shares": loader.shares})
        loader.close()
    gathered = [None] * ctx.world
    dist.all_gather_object(gathered, {"executor": executor_pid(), "sources": out})
    return {"ranks": gathered, "ranks_finished": distributed.finish(ctx)}


def fail_on_rank_one() -> dict:
    ctx = distributed.setup(use_gpu=False)
    if ctx.rank == 1:
        raise ValueError("rank 1 found a corrupt batch (planted)")
    distributed.barrier(ctx)
    return {"ranks_finished": distributed.finish(ctx)}


def rank_one_stalls(seconds: float) -> dict:
    ctx = distributed.setup(use_gpu=False)
    if ctx.rank == 1:
        time.sleep(seconds)
    distributed.barrier(ctx)
    return {"ranks_finished": distributed.finish(ctx)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def offers(spark, workdir):
    """A stage1_offers-shaped Delta table of 1,001 rows (row r: user r) in 9 files: uneven shards on 2 ranks."""
    from pyspark.sql import functions as F

    path = workdir / "stage1_offers"
    (spark.range(1001).select(F.col("id").cast("int").alias("user_id"), F.col("id").cast("int").alias("item_id"),
                              F.array_repeat(F.col("id").cast("int"), 2).alias("neg_item_ids"))
     .repartition(9).write.format("delta").save(str(path)))
    return spark.read.format("delta").load(str(path))


def test_ranks_are_executor_tasks_and_uneven_data_neither_hangs_nor_loses_rows(spark, offers, tmp_path):
    petastorm = loaders.petastorm_source(spark, offers, "stage1_offers", tmp_path / "petastorm-cache", 2)
    parquet = loaders.export_parquet(offers, "stage1_offers", tmp_path / "parquet")
    out = distributed.run(read_every_row, [petastorm, parquet], 64, num_processes=2, local_mode=False)
    ranks = out["ranks"]
    driver_jvm = executor_pid()
    executors = {r["executor"] for r in ranks}
    assert len(executors) == 2 and None not in executors and driver_jvm not in executors, \
        "each rank must run in its own executor JVM"
    for index, kind in enumerate(("petastorm", "parquet")):
        reads = [r["sources"][index] for r in ranks]
        shares = reads[0]["shares"]
        assert sum(shares) == 1001, kind
        assert reads[0]["steps"] == reads[1]["steps"] == -(-max(shares) // 64), f"{kind}: equal steps, no hang"
        assert all(len(r["rows"]) == reads[0]["steps"] * 64 for r in reads)
        assert not set(reads[0]["rows"]) & set(reads[1]["rows"]), f"{kind}: disjoint shards"
    assert ranks[0]["sources"][0]["shares"][0] != ranks[0]["sources"][0]["shares"][1], "9 files: uneven shards"
    parquet_rows = set(ranks[0]["sources"][1]["rows"]) | set(ranks[1]["sources"][1]["rows"])
    assert parquet_rows == set(range(1001)), "every row is read each epoch"


def test_a_rank_that_raises_fails_the_job_with_its_message(spark, tmp_path):
    with pytest.raises(distributed.RankFailure) as failure:
        distributed.run(fail_on_rank_one, num_processes=2, local_mode=False, error_dir=tmp_path / "errors")
    message = str(failure.value)
    assert message.startswith("distributed run of fail_on_rank_one failed: rank 1 raised ValueError: rank 1 found "
                              "a corrupt batch (planted)")
    assert "in fail_on_rank_one" in message  # the rank's traceback comes along


def test_a_collective_that_cannot_complete_times_out(spark, tmp_path):
    with pytest.raises(distributed.RankFailure) as failure:
        distributed.run(rank_one_stalls, 10.0, num_processes=2, local_mode=False, error_dir=tmp_path / "stall",
                        timeout_s=4)
    message = str(failure.value)
    assert "rank 0 raised CollectiveTimeout: a collective did not complete within 4 s" in message
    assert "--collective-timeout-s" in message


@pytest.mark.timeout(1800)  # prepare, train, evaluate and validate on a busy 2-core box
def test_prepare_train_on_executors_evaluate_register_validate(spark, small_movielens, tmp_path):
    """small_movielens was prepared on this cluster session; 2TS trains with its ranks on the executors, reading
    petastorm's cache and the side data from under the data folder."""
    run_dir = small_movielens / "runs" / "cluster-2ts"
    cfg = resolve(TrainConfig, "train", {
        "data": str(small_movielens), "run_dir": str(run_dir), "model": "2ts", "num_processes": 2,
        "local_mode": False, "stage1": {"epochs": 1, "batch_size": 512},
        "stage2": {"epochs": 1, "batch_size": 32}, "log_every_s": 1000, "seed": 3})
    result = train(cfg, spark)
    assert [s["stage"] for s in result.stages] == ["stage1", "stage2"]
    assert all(s["world"] == 2 for s in result.stages)
    cache = list(run_dir.glob("sources/*/petastorm-cache/*"))
    assert cache and (run_dir / "side_data.npz").exists(), "what the ranks read lives under the data folder"
    test_mrr = result.metrics["test"]["overall"]["mrr"]
    assert test_mrr > sum(1 / r for r in range(1, 101)) / 100  # one epoch per stage: better than random among 1 + 99

    rcfg = resolve(RegistryConfig, "registry", {"data": str(small_movielens), "model_name": "twots-cluster"})
    client = connect(rcfg)
    version = register(client, rcfg.model_name, result.run_id)
    assert validate(client, rcfg, spark, version)
    tags = client.get_model_version(rcfg.model_name, version).tags
    assert tags[STATUS] == "passed"
    # validate re-read the candidates from the table's files and replayed the registered model: same MRR as training
    assert float(tags["validation_test_mrr"]) == pytest.approx(test_mrr, abs=1e-6)
    assert str(client.get_model_version_by_alias(rcfg.model_name, CHALLENGER).version) == str(version)
    assert mlflow.get_run(result.run_id).data.params["local_mode"] == "False"
