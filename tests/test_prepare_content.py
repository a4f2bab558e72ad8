"""Every prepared table, cell by cell, against an independent pandas/numpy computation of the documented rules.

The Spark plan of `prepare` is tuned for speed (fewer shuffles, no re-reads); this pins what it must produce:
dense ids in raw-id order, event ids by (ts, raw user, raw item, input line), the split, activity, the last-K
sequences, and the negatives (Spark's xxhash64, re-implemented here in numpy), on the real Taobao sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import PrepareConfig, prepare

P1, P2, P3 = np.uint64(0x9E3779B185EBCA87), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
P4, P5 = np.uint64(0x85EBCA77C2B2AE63), np.uint64(0x27D4EB2F165667C5)
WINDOW = (1511539200, 1512316799)


def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(h):
    h = h ^ (h >> np.uint64(33))
    h = h * P2
    h = h ^ (h >> np.uint64(29))
    h = h * P3
    return h ^ (h >> np.uint64(32))


def _hash_int(value, seed):
    h = seed + P5 + np.uint64(4)
    h = h ^ ((np.asarray(value, np.int64) & 0xFFFFFFFF).astype(np.uint64) * P1)
    return _fmix(_rotl(h, 23) * P2 + P3)


def _hash_long(value, seed):
    h = seed + P5 + np.uint64(8)
    h = h ^ (_rotl(np.asarray(value, np.int64).astype(np.uint64) * P2, 31) * P1)
    return _fmix(_rotl(h, 27) * P1 + P4)


def xxhash64(*columns):
    """Spark's xxhash64 (seed 42) of int (kind "i") and long (kind "l") columns: [(kind, values), ...]."""
    with np.errstate(over="ignore"):
        h = np.uint64(42)
        for kind, values in columns:
            h = (_hash_int if kind == "i" else _hash_long)(values, h)
    return np.asarray(h).astype(np.int64)


def negatives(items, events, n_items, count, seed, salt):
    items, events = np.asarray(items, np.int64), np.asarray(events, np.int64)
    out = np.empty((len(items), count), np.int64)
    for k in range(count):
        offset = xxhash64(("i", seed), ("i", salt), ("l", events), ("i", k)) % (n_items - 1)
        out[:, k] = (items + 1 + offset) % n_items
    return out


def reference(path, cfg):
    """The tables by the rules of docs/data.md, from the CSV alone."""
    raw = pd.read_csv(path, header=None, names=["user", "item", "cat", "behavior", "ts"], dtype=str)
    raw["line"] = np.arange(len(raw))
    ts = raw.ts.astype(np.int64)
    ok = (ts >= WINDOW[0]) & (ts <= WINDOW[1])
    good = raw[ok].assign(ts=ts[ok])
    users = pd.DataFrame({"raw_user_id": sorted(good.user.unique())}).rename_axis("user_id").reset_index()
    feats = {f: i for i, f in enumerate(sorted(good.cat.unique()))}
    items = good.groupby("item").cat.agg(lambda c: sorted(set(c))).sort_index().rename("raw_features").reset_index()
    items = items.rename(columns={"item": "raw_item_id"}).rename_axis("item_id").reset_index()
    items["feature_ids"] = items.raw_features.map(lambda fs: [feats[f] for f in fs])
    events = good.merge(users, left_on="user", right_on="raw_user_id").merge(items, left_on="item",
                                                                           right_on="raw_item_id")
    events = events.sort_values(["ts", "user", "item", "line"]).reset_index(drop=True)
    n = len(events)
    events["event_id"] = np.arange(n)
    events["split"] = np.where(events.event_id < int(n * 0.7), "train",
                               np.where(events.event_id < int(n * 0.8), "val", "test"))
    train = events[events.split == "train"]
    n_items = len(items)
    offers = train[["event_id", "user_id", "item_id"]].copy()
    offers["neg_item_ids"] = list(negatives(offers.item_id, offers.event_id, n_items, cfg.negatives, cfg.seed, 1))
    activity = users[["user_id"]].assign(
        n_train=users.user_id.map(train.groupby("user_id").size()).fillna(0).astype(int))
    activity["is_active"] = activity.n_train > cfg.t_star
    seqs = []
    for user, rows in offers.sort_values("event_id").groupby("user_id"):
        active = len(rows) > cfg.t_star
        kept = rows.tail(cfg.last_k) if active else rows
        prev = rows.item_id.iloc[-cfg.last_k - 1] if active and len(rows) > cfg.last_k else -1
        seqs.append((user, active, kept.item_id.tolist(), np.concatenate(kept.neg_item_ids.tolist()).tolist(), prev))
    sequences = pd.DataFrame(seqs, columns=["user_id", "is_active", "item_ids", "neg_item_ids", "prev_item_id"])
    held = events[events.split != "train"]
    bucket = xxhash64(("i", cfg.seed), ("i", 3), ("i", held.user_id.to_numpy())) % 1_000_000
    held = held[bucket < int(cfg.eval_sample * 1_000_000)]
    cands = held[["event_id", "user_id", "item_id", "ts", "split"]].copy()
    cands["neg_item_ids"] = list(negatives(cands.item_id, cands.event_id, n_items, cfg.eval_negatives, cfg.seed, 2))
    first = events.groupby(["user_id", "item_id"]).event_id.min().rename("first")
    cands["is_repeat"] = cands.event_id > cands.join(first, on=["user_id", "item_id"])["first"]
    return {
        "rejects": raw[~ok].assign(raw=lambda r: r[["user", "item", "cat", "behavior", "ts"]].agg(",".join, axis=1),
                                   reason="out_of_window")[["raw", "reason"]],
        "users": users,
        "items": items[["item_id", "raw_item_id", "feature_ids", "raw_features"]],
        "interactions": events[["event_id", "user_id", "item_id", "ts", "split", "feature_ids"]],
        "user_activity": activity,
        "stage1_offers": offers,
        "sequences": sequences,
        "eval_candidates": cands,
    }


def _canonical(df: pd.DataFrame) -> list[tuple]:
    cells = df.map(lambda v: tuple(int(x) if not isinstance(x, str) else x for x in v)
                   if isinstance(v, (list, np.ndarray)) else (v.item() if isinstance(v, np.generic) else v))
    return sorted(map(tuple, cells.itertuples(index=False)))


@pytest.fixture(scope="module")
def both(spark, shared_data, tmp_path_factory):
    path = shared_data / "taobao-sample" / "UserBehavior.csv"
    cfg = PrepareConfig(source="taobao", input=str(path), output=str(tmp_path_factory.mktemp("content")),
                        t_star=20, last_k=10, negatives=5, eval_negatives=30, seed=11, eval_sample=0.5,
                        min_ts=WINDOW[0], max_ts=WINDOW[1])
    prepare(cfg, spark)
    return cfg, reference(path, cfg)


@pytest.mark.parametrize("name", ["rejects", "users", "items", "interactions", "user_activity", "stage1_offers",
                                  "sequences", "eval_candidates"])
def test_table_equals_the_reference(spark, both, name):
    cfg, expected = both
    want = expected[name]
    got = spark.read.format("delta").load(f"{cfg.output}/{name}").select(*want.columns).toPandas()
    assert len(want) > 0, name
    assert _canonical(got) == _canonical(want), name


def test_reference_covers_both_user_kinds(both):
    _, expected = both
    seqs = expected["sequences"]
    assert seqs.is_active.any() and (~seqs.is_active).any()
    assert (seqs.prev_item_id >= 0).any()
    assert 0 < len(expected["eval_candidates"]) < (expected["interactions"].split != "train").sum()
    assert 0 < expected["eval_candidates"].is_repeat.sum() < len(expected["eval_candidates"])
