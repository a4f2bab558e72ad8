"""Typed configuration of the data jobs: `prepare` and `generate` sections of conf/default.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from twots.config import Section

BEHAVIORS = ("pv", "buy", "cart", "fav")


class PrepareConfig(Section):
    """Raw interaction logs to validated, time-split Delta tables with offer sets."""

    source: Literal["taobao", "movielens", "lastfm"] = Field(description="input format")
    input: str = Field(description="file, folder of part files or glob (movielens: the folder of ratings.csv, movies.csv)")
    output: str = Field(description="folder of the Delta tables and manifest.json")
    threshold: int = Field(20, ge=0, description="t*: a user with n_train > threshold is active")
    last_k: int = Field(10, ge=1, description="K: active users' sequences keep their last K training items (K <= t*)")
    negatives: int = Field(10, ge=1, description="p: negatives per training offer set")
    eval_negatives: int = Field(499, ge=1, description="negatives per val/test event")
    seed: int = Field(7, description="seed of negative sampling and of the evaluation sample")
    train_fraction: float = Field(0.7, gt=0, lt=1, description="first fraction of events (global time order) for train")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="next fraction for val; the rest is test")
    behaviors: list[Literal["pv", "buy", "cart", "fav"]] = Field(
        list(BEHAVIORS), min_length=1, description="taobao: behaviour types kept as interactions")
    min_ts: int | None = Field(None, ge=0, description="reject events before this Unix second")
    max_ts: int | None = Field(None, ge=0, description="reject events after this Unix second")
    dedup: bool = Field(False, description="reject repeated (user, item, ts) rows as duplicates")
    eval_sample: float = Field(1.0, gt=0, le=1, description="fraction of users whose val/test events are evaluated")
    partitions: int = Field(8, ge=1, description="shuffle partitions of the job (local runs) and of its global sorts")

    @field_validator("last_k")
    @classmethod
    def _k_at_most_t_star(cls, k: int, info):
        t_star = info.data.get("threshold")
        if t_star is not None and k > t_star:
            raise ValueError(f"last_k (K={k}) must be <= threshold (t*={t_star}); the paper requires K <= t*")
        return k

    @model_validator(mode="after")
    def _fractions_and_window(self):
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError("train_fraction + val_fraction must be < 1 (the rest is test)")
        if self.min_ts is not None and self.max_ts is not None and self.min_ts > self.max_ts:
            raise ValueError(f"min_ts ({self.min_ts}) must be <= max_ts ({self.max_ts})")
        return self


class GenerateConfig(Section):
    """Taobao-format synthetic interaction log (see pipelines.generate for the generative process)."""

    rows: int = Field(description="interactions to write", ge=1)
    output: str = Field(description="folder of the CSV part files (replaced)")
    seed: int = Field(7, description="same seed, same rows")
    mean_events: float = Field(101.0, gt=1, description="mean events per user (real Taobao log: 101)")
    median_events: float = Field(75.0, gt=1, description="median events per user (real Taobao log: 75)")
    rows_per_item: float = Field(24.0, gt=0, description="rows / items (real log: 100M rows, 4.16M items)")
    items_per_category: int = Field(440, ge=1, description="items per category (real log: about 440)")
    taste_spread: float = Field(0.12, gt=0, le=0.5, description="sd of users' taste centres around the population's")
    taste_width: float = Field(0.03, gt=0, le=0.5, description="sd of one event around its user's current taste")
    drift: float = Field(0.02, ge=0, le=0.5, description="sd of a user's taste shift over the whole window")
    late_share: float = Field(0.1, ge=0, le=1, description="share of users who first appear at a uniform time in the window")
    population_share: float = Field(0.3, ge=0, le=1, description="share of events drawn from the population's taste")
    item_skew: float = Field(3.0, ge=1, description="popularity skew of items within a category (1 = uniform)")
    start_ts: int = Field(1511539200, ge=0, description="first second of the window (Taobao: 2017-11-25 Beijing)")
    days: int = Field(9, ge=1, description="length of the window in days")
    parts: int = Field(8, ge=1, description="CSV part files")
    compress: bool = Field(False, description="gzip the parts")

    @model_validator(mode="after")
    def _mean_above_median(self):
        if self.mean_events <= self.median_events:
            raise ValueError("mean_events must exceed median_events (a right-skewed activity distribution)")
        return self
