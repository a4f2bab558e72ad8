"""twots.training.loaders: both backends over real Spark/Delta tables; equal steps, disjoint shards, deterministic
order, every row read each epoch however unevenly the rows split between the ranks."""

from __future__ import annotations

import pytest
import torch

from twots.training import loaders

ROWS, P, BATCH, WORLD = 1000, 3, 64, 2


@pytest.fixture(scope="module")
def offers(spark, tmp_path_factory):
    """A stage1_offers-shaped Delta table whose row r is user r, item r, negatives [r, r, r]."""
    from pyspark.sql import functions as F

    path = tmp_path_factory.mktemp("offers") / "stage1_offers"
    (spark.range(ROWS).select(
        F.col("id").alias("event_id"), F.col("id").cast("int").alias("user_id"),
        F.col("id").cast("int").alias("item_id"),
        F.array_repeat(F.col("id").cast("int"), P).alias("neg_item_ids"))
     .repartition(5).write.format("delta").save(str(path)))
    return spark.read.format("delta").load(str(path))


def rows_of(loader, epoch: int) -> list[int]:
    batches = list(loader.epoch(epoch))
    assert len(batches) == loader.steps_per_epoch == -(-max(loader.shares) // BATCH)
    for b in batches:
        assert b["user_id"].shape == (BATCH,) and b["neg_item_ids"].shape == (BATCH, P)
        assert torch.equal(b["user_id"], b["item_id"]) and torch.equal(b["neg_item_ids"][:, 0], b["user_id"])
    return torch.cat([b["user_id"] for b in batches]).tolist()


def check_backend(source, exact_cover: bool) -> None:
    ranks = [source.open(rank, WORLD, BATCH, seed=5) for rank in range(WORLD)]
    first = [rows_of(loader, 0) for loader in ranks]
    assert first == [rows_of(loader, 0) for loader in ranks], "same (seed, epoch, rank) must give the same batches"
    assert first[0] != rows_of(ranks[0], 1), "a new epoch must reshuffle"
    assert not set(first[0]) & set(first[1]), "ranks must read disjoint shards"
    assert sum(ranks[0].shares) == ROWS
    if exact_cover:
        assert set(first[0]) | set(first[1]) == set(range(ROWS)), "every row, every epoch"
    for loader in ranks:
        loader.close()


def test_petastorm_backend(spark, offers, tmp_path):
    check_backend(loaders.petastorm_source(spark, offers, "stage1_offers", tmp_path / "cache", WORLD), False)


def test_parquet_backend(offers, tmp_path):
    check_backend(loaders.export_parquet(offers, "stage1_offers", tmp_path / "offers"), True)


def test_uneven_shares_set_the_step_count(spark, offers, tmp_path):
    """Nine files on two ranks: petastorm shards 5 files to rank 0 and 4 to rank 1; the steps cover rank 0's share
    (rows // (batch x world) steps would leave over 100 of its rows out of every epoch). The Parquet loader on three
    ranks (334/333/333 rows) trains every row each epoch."""
    source = loaders.petastorm_source(spark, offers.repartition(9), "stage1_offers", tmp_path / "cache", WORLD)
    loader = source.open(0, WORLD, BATCH, seed=5)
    assert len(loader.shares) == WORLD and sum(loader.shares) == ROWS and loader.shares[0] > loader.shares[1]
    assert loader.steps_per_epoch * BATCH >= loader.shares[0] > (ROWS // (BATCH * WORLD)) * BATCH
    assert len(rows_of(loader, 0)) == loader.steps_per_epoch * BATCH
    parquet = loaders.export_parquet(offers, "stage1_offers", tmp_path / "offers")
    three = [parquet.open(rank, 3, BATCH, seed=5) for rank in range(3)]
    assert three[0].shares == [334, 333, 333]
    seen = [torch.cat([b["user_id"] for b in loader.epoch(0)]).tolist() for loader in three]
    assert all(len(rows) == 6 * BATCH for rows in seen)
    assert set().union(*seen) == set(range(ROWS)) and not set(seen[0]) & set(seen[1])


def test_sequences_are_padded_to_fixed_shape(spark, tmp_path):
    df = spark.createDataFrame(
        [(0, True, [5, 6, 7], [1, 2, 3, 4, 5, 6], 4), (1, False, [8], [9, 9], -1)],
        "user_id int, is_active boolean, item_ids array<int>, neg_item_ids array<int>, prev_item_id int")
    fixed, layout = loaders.fixed_shape(df, "sequences")
    assert (layout.rows, layout.seq_len, layout.negatives) == (2, 3, 2)
    rows = {r["user_id"]: r for r in fixed.collect()}
    assert rows[1]["item_ids"] == [8, -1, -1] and rows[1]["neg_item_ids"] == [9, 9, 0, 0, 0, 0]
    source = loaders.export_parquet(df, "sequences", tmp_path / "sequences")
    batch = next(source.open(0, 1, 2, seed=0).epoch(0))
    assert batch["is_active"].dtype == torch.bool and batch["neg_item_ids"].shape == (2, 3, 2)
    one = (batch["user_id"] == 1).nonzero().item()
    assert batch["neg_item_ids"][one].tolist() == [[9, 9], [0, 0], [0, 0]]
    assert batch["prev_item_id"][one].item() == -1


def test_too_few_rows_for_one_batch_is_an_error():
    with pytest.raises(ValueError, match="lower the batch size"):
        loaders.steps_per_epoch([50, 50], 64)
