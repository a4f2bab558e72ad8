"""prepare's negative sampler (pipelines.negatives): uniform by default and unchanged; `sampler: popularity` draws
training negatives in proportion to count^alpha, never the positive, the same however Spark partitions; the eval
candidates stay uniform."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines import PrepareConfig, prepare
from pipelines.negatives import eval_candidates, stage1_offers
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
    """Regression pin: the arrays below are the uniform sampler's draws for this input and seed, as they were before
    the popularity sampler was added: a new sampler option never changes the default's draws."""
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
def taobao_popularity(spark, shared_data, tmp_path_factory):
    """The Taobao sample prepared with popularity negatives."""
    output = tmp_path_factory.mktemp("taobao-popularity")
    prepare(PrepareConfig(source="taobao", input=str(shared_data / "taobao-sample" / "UserBehavior.csv"),
                          output=str(output), t_star=60, last_k=10, negatives=5, eval_negatives=50, seed=3,
                          sampler="popularity"), spark)
    return output


def test_prepare_with_popularity_negatives(spark, taobao_popularity):
    def table(name):
        return spark.read.format("delta").load(str(taobao_popularity / name))

    manifest = json.loads((taobao_popularity / "manifest.json").read_text())
    assert (manifest["config"]["sampler"], manifest["config"]["alpha"]) == ("popularity", 0.75)
    interactions, n_items = table("interactions"), manifest["n_items"]
    offers = table("stage1_offers").toPandas().set_index("event_id").sort_index()
    # What the uniform sampler draws for the same events and seed.
    uniform_offers = stage1_offers(interactions, n_items, 5, 3).toPandas().set_index("event_id").sort_index()
    assert offers.index.equals(uniform_offers.index) and offers.item_id.equals(uniform_offers.item_id)
    negs = np.stack(offers.neg_item_ids.to_numpy())
    assert (negs != offers.item_id.to_numpy()[:, None]).all()
    assert set(negs.ravel()) <= set(offers.item_id)  # clicked in training
    # The popular items are drawn more often than uniformly: the top 1 % of clicked items take a larger share.
    clicks = offers.item_id.value_counts()
    top = list(clicks.index[:max(1, len(clicks) // 100)])
    assert np.isin(negs, top).mean() > 3 * np.isin(np.stack(uniform_offers.neg_item_ids.to_numpy()), top).mean()
    # sequences hold the very negatives of their steps' offer sets.
    seqs = table("sequences").toPandas()
    assert len(seqs) > 0
    events = offers.reset_index().sort_values("event_id").groupby("user_id")
    for row in seqs.itertuples():
        steps = events.get_group(row.user_id).tail(len(row.item_ids))
        assert list(steps.item_id) == list(row.item_ids)
        assert np.array_equal(np.concatenate(steps.neg_item_ids.to_numpy()), row.neg_item_ids)
    # The evaluation candidates are the uniform ones, untouched.
    cands = table("eval_candidates").toPandas().set_index("event_id").sort_index()
    uniform_cands = eval_candidates(interactions, n_items, 50, 3, 1.0).toPandas().set_index("event_id").sort_index()
    assert cands.index.equals(uniform_cands.index)
    assert all(np.array_equal(a, b) for a, b in zip(cands.neg_item_ids, uniform_cands.neg_item_ids))
