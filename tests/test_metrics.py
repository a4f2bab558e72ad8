import doctest
import math

import numpy as np
import pytest
import torch
from mlflow.utils.validation import validate_param_and_metric_name

import twots.evaluation.metrics
from twots.evaluation.metrics import catalogue_ranks, flatten, rank_metrics, ranks_from_scores, summarize


def test_docstring_examples():
    assert doctest.testmod(twots.evaluation.metrics).failed == 0


def test_rank_counts_higher_negatives_and_half_the_ties():
    pos = np.array([0.5, 0.5, 2.0, 1.0])
    neg = np.array([
        [0.1, 0.2, 0.3],  # none higher: rank 1
        [0.9, 0.5, 0.1],  # one higher, one tie: 1 + 1 + 0.5
        [3.0, 4.0, 5.0],  # all higher: 4
        [1.0, 1.0, 1.0],  # all tied: 1 + 1.5
    ])
    expected = [1.0, 2.5, 4.0, 2.5]
    assert ranks_from_scores(pos, neg).tolist() == expected
    assert ranks_from_scores(torch.tensor(pos), torch.tensor(neg)).tolist() == expected


def test_catalogue_ranks_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (50, 30)).astype(np.float32)  # few values: many ties
    positives = rng.integers(0, 30, 50)
    excluded = np.unique(rng.integers(0, 50 * 30, 300))  # distinct (row, item) pairs, some on positives
    rows, items = excluded // 30, excluded % 30
    for pairs in (None, (rows, items)):
        expected = []
        for row, pos in enumerate(positives):
            others = np.ones(30, bool)
            others[pos] = False
            if pairs is not None:
                others[items[(rows == row) & (items != pos)]] = False
            expected.append(1 + np.sum(scores[row, others] > scores[row, pos])
                            + np.sum(scores[row, others] == scores[row, pos]) / 2)
        got = catalogue_ranks(torch.from_numpy(scores), torch.from_numpy(positives),
                              *(() if pairs is None else (torch.from_numpy(rows), torch.from_numpy(items))))
        assert got.tolist() == expected


def test_rank_metrics_by_hand():
    ranks = np.array([1.0, 2.0, 10.0, 11.0, 2.5])
    got = rank_metrics(ranks)
    assert got["count"] == 5
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 2.5) / 5)
    assert got["recall@10"] == pytest.approx(4 / 5)
    ndcg = (1 + 1 / math.log2(3) + 1 / math.log2(11) + 0 + 1 / math.log2(3.5)) / 5
    assert got["ndcg@10"] == pytest.approx(ndcg)
    assert rank_metrics(np.array([])) == {"count": 0, "mrr": None, "recall@10": None, "ndcg@10": None}
    assert rank_metrics(ranks, prefix="full_") == {f"full_{name}": value for name, value in got.items()}


def test_summary_splits_users_into_groups_and_activity_buckets():
    ranks = np.array([1.0, 2.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0])
    n_train = np.array([0, 0, 50, 51, 100, 101, 300, 301])
    is_active = n_train > 100  # t* = 100, given by user_activity
    got = summarize(ranks, n_train, is_active)
    assert got["overall"]["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert got["new"]["count"] == 2 and got["new"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert got["inactive"]["count"] == 3 and got["inactive"]["mrr"] == pytest.approx((1 / 4 + 1 / 5 + 1 / 10) / 3)
    assert got["active"]["count"] == 3 and got["active"]["recall@10"] == 0.0
    buckets = {label: m["count"] for label, m in got["buckets"].items()}
    assert buckets == {"<51": 3, "51-100": 2, "101-200": 1, "201-300": 1, ">300": 1}
    assert got["buckets"]["51-100"]["mrr"] == pytest.approx((1 / 5 + 1 / 10) / 2)
    # an explicit is_new overrides n_train == 0
    assert summarize(ranks, n_train, is_active, is_new=np.zeros(8, bool))["new"]["count"] == 0


def test_full_ranks_are_summarized_beside_the_sampled_ones_where_given():
    ranks = np.array([1.0, 2.0, 4.0, 5.0, 10.0, 20.0])
    full = np.array([3.0, np.nan, 40.0, np.nan, 11.0, 1.0])  # NaN: not ranked against the catalogue
    n_train = np.array([0, 0, 50, 51, 400, 400])
    got = summarize(ranks, n_train, n_train > 100, full_ranks=full)
    assert got["overall"]["mrr"] == pytest.approx(np.mean(1 / ranks))  # the sampled metrics are unchanged
    assert got["overall"]["full_count"] == 4
    assert got["overall"]["full_mrr"] == pytest.approx((1 / 3 + 1 / 40 + 1 / 11 + 1) / 4)
    assert got["overall"]["full_recall@10"] == pytest.approx(2 / 4)
    assert got["active"]["full_ndcg@10"] == pytest.approx((0 + 1) / 2)
    assert got["new"]["full_count"] == 1 and got["new"]["full_mrr"] == pytest.approx(1 / 3)
    assert got["buckets"]["51-100"]["count"] == 1 and got["buckets"]["51-100"]["full_count"] == 0
    assert got["buckets"]["51-100"]["full_mrr"] is None
    assert summarize(ranks, n_train, n_train > 100)["overall"].keys() == {"count", "mrr", "recall@10", "ndcg@10"}
    flat = flatten(got)
    assert flat["test/full_mrr"] == got["overall"]["full_mrr"] and flat["test/bucket_51-100/full_count"] == 0
    assert "test/bucket_51-100/full_mrr" not in flat  # no value: not logged
    assert all(validate_param_and_metric_name(k) for k in flat)
    with pytest.raises(ValueError, match="full_ranks must be >= 1"):
        summarize(ranks, n_train, n_train > 100, full_ranks=np.full(6, 0.5))
    with pytest.raises(ValueError, match="one length"):
        summarize(ranks, n_train, n_train > 100, full_ranks=full[:3])


def test_repeat_clicks_are_summarized_apart_from_first_clicks_where_given():
    ranks = np.array([1.0, 2.0, 4.0, 5.0, 10.0])
    n_train = np.array([0, 3, 50, 400, 400])
    is_repeat = np.array([False, True, False, True, True])
    got = summarize(ranks, n_train, n_train > 100, is_repeat=is_repeat)
    assert got["repeat"]["count"] == 3 and got["repeat"]["mrr"] == pytest.approx((1 / 2 + 1 / 5 + 1 / 10) / 3)
    assert got["first_click"]["count"] == 2 and got["first_click"]["recall@10"] == 1.0
    assert got["first_click"]["mrr"] == pytest.approx((1 + 1 / 4) / 2)
    assert flatten(got)["test/repeat/mrr"] == got["repeat"]["mrr"]
    assert "repeat" not in summarize(ranks, n_train, n_train > 100)
    with pytest.raises(ValueError, match="one length"):
        summarize(ranks, n_train, n_train > 100, is_repeat=is_repeat[:2])


def test_metrics_by_rollout_place_and_update_gate_per_group():
    """by_steps buckets each event by its place in its user's rollout from the start state; gate means skip NaN."""
    ranks = np.array([1.0, 2.0, 4.0, 5.0, 10.0, 20.0])
    n_train = np.array([0, 3, 50, 400, 400, 400])
    active = n_train > 100
    steps = np.array([1, 4, 11, 12, 51, 30])
    gate = np.array([np.nan, 0.2, 0.4, 0.9, 0.7, 0.8])
    got = summarize(ranks, n_train, active, steps=steps, gate=gate)
    by = got["by_steps"]
    assert by["active"]["11-20"]["count"] == 1 and by["active"]["11-20"]["mrr"] == pytest.approx(1 / 5)
    assert by["active"][">50"]["mrr"] == pytest.approx(1 / 10) and by["active"]["21-50"]["mrr"] == 1 / 20
    assert by["active"]["1-10"]["count"] == 0 and by["active"]["1-10"]["mrr"] is None
    assert by["overall"]["1-10"]["count"] == 2 and by["overall"]["1-10"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert by["new"]["1-10"]["count"] == 1 and by["inactive"]["11-20"]["count"] == 1
    assert got["gate"] == {"overall": pytest.approx(0.6), "active": pytest.approx(0.8), "inactive": pytest.approx(0.3),
                           "new": None}
    flat = flatten(got)
    assert flat["test/steps_gt50/active/mrr"] == pytest.approx(0.1) and flat["test/gate/active"] == pytest.approx(0.8)
    assert "test/gate/new" not in flat and "test/steps_1-10/active/mrr" not in flat


def test_summary_rejects_bad_input():
    with pytest.raises(ValueError, match="one length"):
        summarize(np.array([1.0, 2.0]), np.array([1]), np.array([True, False]))
    with pytest.raises(ValueError, match=">= 1"):
        summarize(np.array([0.5]), np.array([3]), np.array([False]))
    with pytest.raises(ValueError, match="both active and new"):
        summarize(np.array([1.0]), np.array([0]), np.array([True]))


def test_flat_names_are_mlflow_safe_and_skip_empty_groups():
    flat = flatten(summarize(np.array([1.0, 4.0]), np.array([0, 400]), np.array([False, True])))
    assert flat["test/mrr"] == pytest.approx(0.625)
    assert flat["test/new/count"] == 1 and flat["test/active/mrr"] == 0.25
    assert flat["test/bucket_gt300/mrr"] == 0.25 and flat["test/bucket_lt51/recall_at_10"] == 1.0
    assert not any(k.startswith("test/inactive/") or "51-100" in k for k in flat)
    assert all(validate_param_and_metric_name(k) for k in flat)
