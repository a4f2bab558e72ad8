import math

import numpy as np
import pytest
import torch
from mlflow.utils.validation import validate_param_and_metric_name

from twots.evaluation.metrics import flatten, rank_metrics, ranks_from_scores, summarize


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


def test_rank_metrics_by_hand():
    ranks = np.array([1.0, 2.0, 10.0, 11.0, 2.5])
    got = rank_metrics(ranks)
    assert got["count"] == 5
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 2.5) / 5)
    assert got["recall@10"] == pytest.approx(4 / 5)
    ndcg = (1 + 1 / math.log2(3) + 1 / math.log2(11) + 0 + 1 / math.log2(3.5)) / 5
    assert got["ndcg@10"] == pytest.approx(ndcg)
    assert rank_metrics(np.array([])) == {"count": 0, "mrr": None, "recall@10": None, "ndcg@10": None}


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
