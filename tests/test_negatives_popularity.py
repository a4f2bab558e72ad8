"""prepare's negative sampler (pipelines.negatives): uniform by default and unchanged; `sampler: popularity` draws
training negatives in proportion to count^alpha, never the positive, the same however Spark partitions; the eval
candidates stay uniform."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines import PrepareConfig, prepare
from pipelines.negatives import stage1_offers
from twots.config import ConfigError, resolve

N_CLICKED, N_ITEMS, P = 30, 35, 10
COUNTS = np.array([round(200 / (i + 1)) for i in range(N_CLICKED)])  # Zipf-like; items 30..34 only in val


def interactions(spark, partitions: int = 2):
    """Training events: item i clicked COUNTS[i] times (in a shuffled order, by 40 users); val events on the items
    never clicked in training."""
    rng = np.random.default_rng(0)
    items = rng.permutation(np.repeat(np.arange(N_CLICKED), COUNTS))
    val_items = np.arange(N_CLICKED, N_ITEMS).repeat(3)
    frame = pd.DataFrame({
        "event_id": np.arange(len(items) + len(val_items)),
        "user_id": rng.integers(0, 40, len(items) + len(val_items)).astype("int32"),
        "item_id": np.concatenate([items, val_items]).astype("int32"),
        "split": ["train"] * len(items) + ["val"] * len(val_items)})
    return spark.createDataFrame(frame).repartition(partitions)


def draws(df) -> dict[int, tuple[int, list[int]]]:
    return {r.event_id: (r.item_id, list(r.neg_item_ids)) for r in df.collect()}


def test_uniform_is_the_default_and_draws_what_it_drew_before(spark):
    """Regression pin: the arrays below are what pipelines.negatives drew at main 7d0431e (before the popularity
    sampler) for this input and seed."""
    rows = [(e, e % 7, (e * 5) % 23, "train" if e < 40 else "val") for e in range(50)]
    df = spark.createDataFrame(rows, "event_id long, user_id int, item_id int, split string")
    got = draws(stage1_offers(df, 23, 4, 11))
    assert got == draws(stage1_offers(df, 23, 4, 11, sampler="uniform"))
    assert [got[e][1] for e in range(5)] == [[14, 6, 21, 14], [11, 6, 15, 3], [14, 3, 3, 2], [8, 12, 6, 5],
                                             [1, 15, 9, 6]]
    assert sum(sum(negs) * (e + 1) for e, (_, negs) in got.items()) == 38540
    assert PrepareConfig(source="taobao", input="x", output="y").sampler == "uniform"


def test_popularity_draws_follow_count_to_the_alpha_and_never_the_positive(spark):
    """7,990 draws; had they followed count^1 instead of count^0.75, the chi-square would be about 640, its bound
    75."""
    alpha = 0.75
    got = draws(stage1_offers(interactions(spark), N_ITEMS, P, seed=5, sampler="popularity", alpha=alpha))
    assert len(got) == COUNTS.sum()  # one row per training event, none lost in the join
    positives = np.array([pos for pos, _ in got.values()])
    negs = np.array([n for _, n in got.values()])
    assert negs.shape == (COUNTS.sum(), P)
    assert (negs != positives[:, None]).all()
    assert negs.max() < N_CLICKED  # items never clicked in training are never drawn
    # Expected draws of item j: each event with positive a draws j with probability q_j / (1 - q_a), j != a.
    q = COUNTS ** alpha / (COUNTS ** alpha).sum()
    expected = np.zeros(N_CLICKED)
    for a, n_events in zip(*np.unique(positives, return_counts=True)):
        share = q / (1 - q[a])
        share[a] = 0
        expected += P * n_events * share
    observed = np.bincount(negs.ravel(), minlength=N_CLICKED)
    dof = N_CLICKED - 1
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, observed[:5], expected[:5].round())
    uniform = np.full(N_CLICKED, negs.size / N_CLICKED)
    assert ((observed - uniform) ** 2 / uniform).sum() > 20 * dof  # and far from uniform


def test_popularity_draws_do_not_depend_on_partitioning(spark):
    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        one = draws(stage1_offers(interactions(spark, 1), N_ITEMS, P, seed=9, sampler="popularity"))
        spark.conf.set("spark.sql.shuffle.partitions", "7")
        seven = draws(stage1_offers(interactions(spark, 7), N_ITEMS, P, seed=9, sampler="popularity"))
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
    assert one == seven
    other_seed = draws(stage1_offers(interactions(spark), N_ITEMS, P, seed=10, sampler="popularity"))
    assert sum(one[e][1] != other_seed[e][1] for e in one) > 0.9 * len(one)


def test_bad_sampler_settings_name_the_key():
    base = {"source": "taobao", "input": "x", "output": "y"}
    with pytest.raises(ConfigError, match=r"prepare\.sampler"):
        resolve(PrepareConfig, "prepare", {**base, "sampler": "zipf"})
    with pytest.raises(ConfigError, match=r"prepare\.alpha"):
        resolve(PrepareConfig, "prepare", {**base, "alpha": "-0.5"})


@pytest.fixture(scope="module")
def taobao_both(spark, shared_data, tmp_path_factory):
    """The Taobao sample prepared with each sampler, the same seed."""
    out = {}
    for sampler in ("uniform", "popularity"):
        output = tmp_path_factory.mktemp(f"taobao-{sampler}")
        prepare(PrepareConfig(source="taobao", input=str(shared_data / "taobao-sample" / "UserBehavior.csv"),
                              output=str(output), threshold=60, last_k=10, negatives=5, eval_negatives=50, seed=3,
                              sampler=sampler), spark)
        out[sampler] = output
    return out


def test_prepare_with_popularity_negatives(spark, taobao_both):
    def table(sampler, name):
        return spark.read.format("delta").load(str(taobao_both[sampler] / name)).toPandas()

    manifest = json.loads((taobao_both["popularity"] / "manifest.json").read_text())
    assert (manifest["config"]["sampler"], manifest["config"]["alpha"]) == ("popularity", 0.75)
    offers = table("popularity", "stage1_offers").set_index("event_id").sort_index()
    uniform_offers = table("uniform", "stage1_offers").set_index("event_id").sort_index()
    assert offers.index.equals(uniform_offers.index) and offers.item_id.equals(uniform_offers.item_id)
    negs = np.stack(offers.neg_item_ids.to_numpy())
    assert (negs != offers.item_id.to_numpy()[:, None]).all()
    assert set(negs.ravel()) <= set(offers.item_id)  # clicked in training
    # The popular items are drawn more often than uniformly: the top 1 % of clicked items take a larger share.
    clicks = offers.item_id.value_counts()
    top = set(clicks.index[:max(1, len(clicks) // 100)])
    share = np.isin(negs, list(top)).mean()
    uniform_negs = np.stack(uniform_offers.neg_item_ids.to_numpy())
    assert share > 3 * np.isin(uniform_negs, list(top)).mean()
    # sequences hold the very negatives of their steps' offer sets.
    seqs = table("popularity", "sequences")
    assert len(seqs) > 0
    events = offers.reset_index().sort_values("event_id").groupby("user_id")
    for row in seqs.itertuples():
        user_events = events.get_group(row.user_id)
        steps = user_events.tail(len(row.item_ids))
        assert list(steps.item_id) == list(row.item_ids)
        assert np.array_equal(np.concatenate(steps.neg_item_ids.to_numpy()), row.neg_item_ids)
    # The evaluation candidates are the uniform ones, untouched.
    cands = table("popularity", "eval_candidates").set_index("event_id").sort_index()
    uniform_cands = table("uniform", "eval_candidates").set_index("event_id").sort_index()
    assert cands.index.equals(uniform_cands.index)
    assert all(np.array_equal(a, b) for a, b in zip(cands.neg_item_ids, uniform_cands.neg_item_ids))
