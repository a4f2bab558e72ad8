"""Typed configuration of the data jobs: `prepare` and `generate` sections of conf/default.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from twots.config import Section
from twots.data.tables import (
    EVAL_CANDIDATES,
    INTERACTIONS,
    ITEMS,
    REJECTS,
    SEQUENCES,
    STAGE1_OFFERS,
    USER_ACTIVITY,
    USERS,
)

BEHAVIORS = ("pv", "buy", "cart", "fav")
# prepare's steps in order (pipelines.pipeline; independent ones run at the same time), as the manifest lists them.
STEPS = ("parse", REJECTS, USERS, ITEMS, INTERACTIONS, USER_ACTIVITY, STAGE1_OFFERS, SEQUENCES, EVAL_CANDIDATES,
         "manifest")


class PrepareConfig(Section):
    """Raw interaction logs to validated, time-split Delta tables with offer sets."""

    source: Literal["taobao", "movielens", "lastfm"] = Field(description="input format")
    input: str = Field(description="file, folder of part files or glob (movielens: the folder of ratings.csv, "
                                   "movies.csv)")
    output: str = Field(description="folder of the Delta tables and manifest.json")
    t_star: int = Field(20, ge=0, description="t*: a user with n_train > t_star is active")
    last_k: int = Field(10, ge=1, description="K: active users' sequences keep their last K training items (K <= t*)")
    negatives: int = Field(10, ge=1, description="p: negatives per training offer set")
    sampler: Literal["uniform", "popularity"] = Field(
        "uniform", description="training offer sets' negatives (stage1_offers, sequences): uniform over the items, "
        "or popularity: in proportion to the item's training count^alpha; never the positive. The eval "
        "candidates stay uniform")
    alpha: float = Field(0.75, ge=0, description="sampler popularity: the exponent of the training count (1: as "
                                                 "clicked, 0: uniform over the items clicked in training)")
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
    partitions: int = Field(8, ge=1, description="shuffle partitions (never coalesced by jobs/prepare.py) and fewest "
                            "input splits of the job (local runs)")

    @field_validator("last_k")
    @classmethod
    def _k_at_most_t_star(cls, k: int, info):
        t_star = info.data.get("t_star")
        if t_star is not None and k > t_star:
            raise ValueError(f"last_k (K={k}) must be <= t_star (t*={t_star}); the paper requires K <= t*")
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
    median_events: float = Field(
        72.0, gt=1, description="median events per user (the real sample's mean/median ratio 87.7/62.5 at mean 101)")
    rows_per_item: float = Field(22.8, gt=0, description="rows / items made; 95 % of them occur, so the log has about "
                                 "24 rows per distinct item like the real one (100M rows, 4.16M items)")
    items_per_category: int = Field(462, ge=1, description="items made per category; 95 % occur, about 440 like the "
                                    "real log's (4.16M items, 9.4k categories)")
    taste_spread: float = Field(0.08, gt=0, le=0.5, description="scale of users' home tastes around the population's "
                                "(a Cauchy's, circle units)")
    drift: float = Field(0.02, ge=0, le=0.5, description="sd of a user's taste shift over the whole window "
                         "(circle units)")
    late_share: float = Field(0.1, ge=0, le=1, description="share of users who first appear at a uniform time in "
                              "the window")
    session_rate: float = Field(0.185, gt=0, lt=1, description="mean probability that an event starts a new session")
    gap_median_s: float = Field(58.0, gt=0, lt=1799, description="median gap between events of a session (seconds)")
    gap_sigma: float = Field(1.36, ge=0, description="log-sd of the gaps inside a session")
    session_focus: float = Field(0.7, ge=0, le=1, description="share of a session's events on its episode's main "
                                 "category")
    favourites: int = Field(6, ge=1, description="favourite category slots per user")
    favourite_share: float = Field(0.5, ge=0, le=1, description="share of other choices made among the favourites")
    favourite_width: float = Field(30.0, gt=0, description="sd of favourites around the home taste, in categories")
    favourite_life: float = Field(8.0, gt=0, description="sessions a favourite lasts before it is replaced (drift)")
    explore_width: float = Field(20.0, gt=0, description="sd of explored categories around the current taste, in "
                                 "categories")
    item_skew: float = Field(2.0, ge=1, description="popularity skew of item slots within a category (1 = uniform)")
    item_turnover: int = Field(2, ge=0, description="times a slot's item is replaced by a new one over the window")
    repeat_pv: float = Field(0.17, ge=0, le=1, description="share of pv events that re-view an earlier item")
    repeat_cart: float = Field(0.14, ge=0, le=1, description="share of cart events on an earlier item")
    repeat_fav: float = Field(0.1, ge=0, le=1, description="share of fav events on an earlier item")
    repeat_buy: float = Field(0.5, ge=0, le=1, description="share of buy events on an earlier item")
    funnel_share: float = Field(0.3, ge=0, le=1, description="share of repeat buys on an item the user carted or faved")
    repeat_recency: float = Field(6.0, gt=0, description="mean number of fresh events between a repeat and its source")
    start_ts: int = Field(1511539200, ge=0, description="first second of the window (Taobao: 2017-11-25 Beijing)")
    days: int = Field(9, ge=1, description="length of the window in days")
    parts: int = Field(8, ge=1, description="CSV part files")
    compress: bool = Field(False, description="gzip the parts")

    @model_validator(mode="after")
    def _mean_above_median(self):
        if self.mean_events <= self.median_events:
            raise ValueError("mean_events must exceed median_events (a right-skewed activity distribution)")
        return self


class ProfileConfig(Section):
    """Profile of a raw log or a prepared output folder (see pipelines.profile for the statistics)."""

    input: str = Field(description="raw log (with source) or prepared output folder (without source)")
    source: Literal["taobao", "movielens", "lastfm"] | None = Field(
        None, description="format of a raw log; unset: input is a prepared output folder")
    output: str | None = Field(None, description="JSON file of the profile (default: only printed)")
    run_id: str | None = Field(None, description="MLflow run to log the profile to")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<input>/mlflow.db for a prepared folder")
    session_gap: int = Field(1800, ge=1, description="seconds: a longer gap between a user's events ends a session")
    sample_users: int = Field(0, ge=0, description="also profile random samples of this many users (0: no samples)")
    samples: int = Field(5, ge=1, description="how many such samples (their mean is reported)")
    seed: int = Field(0, description="seed of the user samples")
