"""How training rows reach the ranks: a small `Loader` interface and two backends.

A `Source` is made on the driver, pickled into the train function and opened on each rank as a `Loader`:
- `PetastormSource`: petastorm's `make_spark_converter` over a Delta table (the product path under Spark);
- `ParquetSource`: plain Parquet files read with pyarrow (for a box without Spark, and proof the interface holds).

Both give every rank exactly `steps_per_epoch` full batches per epoch (equal step counts keep the collectives in
lock step) in an order fixed by (seed, epoch, rank), so a run resumed from an epoch checkpoint sees the same
batches as an uninterrupted one. The rows are split between the ranks unevenly (petastorm shards whole row
groups), so the step count is set by the largest share: that rank reads all of its rows each epoch and the others
repeat some of theirs, rather than the largest share losing its tail. Batches are dicts of tensors with the keys of
docs/design.md.

Petastorm cannot collate ragged arrays, so `fixed_shape` pads the `sequences` arrays in Spark first. Nothing from
Spark or petastorm is imported at module level: the rank side must run where only torch and pyarrow exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from twots.data.tables import PAD_ITEM, SEQUENCES, STAGE1_OFFERS

STAGE1_COLUMNS = ("user_id", "item_id", "neg_item_ids")
STAGE2_COLUMNS = ("user_id", "is_active", "item_ids", "neg_item_ids", "prev_item_id")
PAD_NEGATIVE = 0     # padding in the negatives of padded steps: any valid id, those steps are masked out


class Loader(Protocol):
    steps_per_epoch: int

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield exactly `steps_per_epoch` batches for this rank."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Layout:
    """The shape of one training table: its columns and, for padded sequences, the step count L and negatives p."""

    columns: tuple[str, ...]
    rows: int
    seq_len: int = 0
    negatives: int = 0

    def to_batch(self, columns: dict[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {}
        for name in self.columns:
            t = torch.as_tensor(columns[name])
            batch[name] = t.bool() if name == "is_active" else t.long()
        if self.seq_len and batch["neg_item_ids"].dim() == 2:
            batch["neg_item_ids"] = batch["neg_item_ids"].view(-1, self.seq_len, self.negatives)
        return batch


def steps_per_epoch(shares: list[int], batch_size: int) -> int:
    """Steps of every rank per epoch when rank r holds `shares[r]` rows: enough batches for the largest share."""
    rows, world = sum(shares), len(shares)
    if rows < batch_size * world or min(shares) == 0:
        raise ValueError(f"{rows} rows (per rank: {shares}) are fewer than one batch of {batch_size} per rank on "
                         f"{world} ranks: lower the batch size")
    return -(-max(shares) // batch_size)


def even_shares(rows: int, world: int) -> list[int]:
    """Rows per rank when `rows` are dealt out as evenly as possible."""
    return [rows // world + (rank < rows % world) for rank in range(world)]


def row_group_shares(file_urls: list[str], world: int) -> list[int]:
    """Rows per rank of petastorm's sharding: the row groups of the sorted files, numbered in order, go to rank
    `number % world`."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    sizes = []
    for url in sorted(file_urls):
        filesystem, path = fs.FileSystem.from_uri(url)
        with filesystem.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
            sizes.extend(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return [sum(sizes[rank::world]) for rank in range(world)]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed per (run seed, epoch, rank); never 0, which petastorm treats as 'no seed' (random order)."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**31 - 1) + 1


# ---- driver side: fixed-shape DataFrames -------------------------------------------------------------------------

def fixed_shape(df, table: str):
    """DataFrame of a training table -> (DataFrame with fixed-length arrays, Layout)."""
    from pyspark.sql import functions as F

    if table == STAGE1_OFFERS:
        df = df.select(*STAGE1_COLUMNS)
        return df, Layout(STAGE1_COLUMNS, df.count())
    if table != SEQUENCES:
        raise ValueError(f"no training layout for table {table!r}")
    stats = df.agg(F.max(F.size("item_ids")).alias("L"), F.count("*").alias("rows"),
                   F.max(F.size("neg_item_ids") / F.greatest(F.size("item_ids"), F.lit(1))).alias("p")).first()
    seq_len, rows, p = int(stats["L"] or 0), int(stats["rows"]), int(stats["p"] or 0)

    def pad(col: str, length: int, value: int):
        return F.concat(F.col(col), F.array_repeat(F.lit(value), F.lit(length) - F.size(col))).alias(col)

    df = df.select("user_id", "is_active", pad("item_ids", seq_len, PAD_ITEM),
                   pad("neg_item_ids", seq_len * p, PAD_NEGATIVE), "prev_item_id")
    return df, Layout(STAGE2_COLUMNS, rows, seq_len, p)


# ---- backend 1: petastorm over Spark -----------------------------------------------------------------------------

@dataclass
class PetastormSource:
    """A petastorm converter of a fixed-shape DataFrame. Make it with `petastorm_source` on the driver."""

    converter: object
    layout: Layout
    reader_threads: int = 1   # one reader thread keeps the row-group order, hence the batches, deterministic

    def open(self, rank: int, world: int, batch_size: int, seed: int) -> Loader:
        return _PetastormLoader(self, rank, world, batch_size, seed)

    def shares(self, world: int) -> list[int]:
        return row_group_shares(self.converter.file_urls, world)


def petastorm_source(spark, df, table: str, cache_dir: Path, world: int) -> PetastormSource:
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, Path(cache_dir).resolve().as_uri())
    fixed, layout = fixed_shape(df, table)
    # Shards are row groups: enough files that every rank gets some, few enough to stay sequential reads.
    fixed = fixed.repartition(max(4 * world, fixed.rdd.getNumPartitions()))
    converter = make_spark_converter(fixed)
    # Spark lists the files in no fixed order; petastorm numbers row groups (hence shards and order) by position.
    converter.file_urls = sorted(converter.file_urls)
    return PetastormSource(converter, layout)


class _PetastormLoader:
    def __init__(self, source: PetastormSource, rank: int, world: int, batch_size: int, seed: int):
        self.source, self.rank, self.world, self.batch_size, self.seed = source, rank, world, batch_size, seed
        self.shares = source.shares(world)
        self.steps_per_epoch = steps_per_epoch(self.shares, batch_size)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        from petastorm.pytorch import BatchedDataLoader

        s = epoch_seed(self.seed, epoch, self.rank)
        torch.manual_seed(s)  # BatchedDataLoader's shuffling buffer draws from torch's global generator
        # num_epochs=None: shards are uneven, so a short shard wraps around instead of ending early. (Rows still in
        # the shuffling queue when the epoch's last batch is drawn are the one exception to reading the whole shard.)
        # `seed` orders the row groups of this rank and epoch; `shard_seed` (the same on every rank and epoch,
        # else petastorm shards with `seed`) splits the row groups into disjoint shards. petastorm calls it
        # deprecated, but `seed` cannot do both (twots.cli.HARMLESS_WARNINGS).
        context = self.source.converter.make_torch_dataloader(
            batch_size=self.batch_size, num_epochs=None, workers_count=self.source.reader_threads,
            shuffling_queue_capacity=4 * self.batch_size, data_loader_fn=BatchedDataLoader,
            cur_shard=self.rank, shard_count=self.world, shard_seed=epoch_seed(self.seed, 0, 0), seed=s,
            shuffle_row_groups=True)
        with context as loader:
            batches = iter(loader)
            for _ in range(self.steps_per_epoch):
                yield self.source.layout.to_batch(next(batches))

    def close(self) -> None:
        """Nothing held between epochs: each epoch's petastorm reader is closed by its own context manager."""


# ---- backend 2: plain Parquet ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParquetSource:
    """A folder of Parquet files with fixed-length arrays (see `export_parquet`)."""

    path: str
    layout: Layout

    def open(self, rank: int, world: int, batch_size: int, seed: int) -> Loader:
        return _ParquetLoader(self, rank, world, batch_size, seed)

    def shares(self, world: int) -> list[int]:
        return even_shares(self.layout.rows, world)


def export_parquet(df, table: str, path: Path) -> ParquetSource:
    """Driver side: write a table's fixed-shape rows as plain Parquet for `ParquetSource`."""
    fixed, layout = fixed_shape(df, table)
    fixed.write.mode("overwrite").parquet(str(path))
    return ParquetSource(str(path), layout)


def read_columns(path: str, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Parquet folder -> numpy columns (see `arrow_columns`)."""
    import pyarrow.parquet as pq

    return arrow_columns(pq.read_table(path, columns=list(columns)))


def arrow_columns(table) -> dict[str, np.ndarray]:
    """pyarrow Table -> numpy columns; fixed-length list columns become 2-D arrays."""
    import pyarrow as pa

    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            flat = col.flatten().to_numpy()
            out[name] = flat.reshape(len(col), len(flat) // max(len(col), 1))
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


class _ParquetLoader:
    """Holds the whole table in memory; each epoch a seeded permutation is cut into per-rank slices (`even_shares`),
    and a shorter slice wraps around to the common step count: every row is trained on every epoch."""

    def __init__(self, source: ParquetSource, rank: int, world: int, batch_size: int, seed: int):
        self.layout, self.rank, self.world, self.batch_size, self.seed = source.layout, rank, world, batch_size, seed
        # Arrow hands out read-only buffers; torch wants to own writable memory.
        self.columns = {k: torch.from_numpy(np.array(v)) for k, v in
                        read_columns(source.path, source.layout.columns).items()}
        self.rows = len(self.columns["user_id"])
        self.shares = source.shares(world)
        self.steps_per_epoch = steps_per_epoch(self.shares, batch_size)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        # The same permutation on every rank (seeded without the rank), each rank takes its own slice.
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 0))
        order = torch.randperm(self.rows, generator=g)
        start = sum(self.shares[:self.rank])
        share = order[start:start + self.shares[self.rank]]
        mine = share[torch.arange(self.steps_per_epoch * self.batch_size) % len(share)]
        for step in range(self.steps_per_epoch):
            idx = mine[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.layout.to_batch({k: v[idx] for k, v in self.columns.items()})

    def close(self) -> None:
        self.columns = {}
