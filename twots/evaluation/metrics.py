"""Ranking metrics of the paper's section 5: rank of the positive among its candidates, MRR, Recall@10, NDCG@10,
overall, per user group (active / inactive / new) and per activity bucket of n_train (Fig. 3)."""

from __future__ import annotations

import math

import numpy as np

TOP_K = 10
# (label, lowest n_train, highest n_train) of the paper's Fig. 3; new users (n_train 0) fall in "<51".
BUCKETS = (("<51", 0, 50), ("51-100", 51, 100), ("101-200", 101, 200), ("201-300", 201, 300),
           (">300", 301, math.inf))


def ranks_from_scores(pos_score, neg_scores):
    """1 + #(negatives scoring higher) + #(ties)/2: the expected rank under a random tie break.

    pos_score [N], neg_scores [N, C]; numpy arrays or torch tensors (the result is of the same library).
    """
    higher = (neg_scores > pos_score[:, None]).sum(1)
    ties = (neg_scores == pos_score[:, None]).sum(1)
    return 1 + higher + ties / 2


def rank_metrics(ranks: np.ndarray) -> dict:
    """count, MRR, Recall@10, NDCG@10 of a set of ranks (metrics are None when there are no ranks)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {"count": 0, "mrr": None, f"recall@{TOP_K}": None, f"ndcg@{TOP_K}": None}
    in_top = ranks <= TOP_K
    # One relevant item: DCG = 1 / log2(rank + 1) when it is in the top K, and the ideal DCG is 1.
    return {
        "count": int(ranks.size),
        "mrr": float(np.mean(1.0 / ranks)),
        f"recall@{TOP_K}": float(np.mean(in_top)),
        f"ndcg@{TOP_K}": float(np.mean(np.where(in_top, 1.0 / np.log2(ranks + 1.0), 0.0))),
    }


def summarize(ranks, n_train, is_active, is_new=None) -> dict:
    """Metrics of one set of evaluated interactions, all arrays aligned per interaction.

    n_train: the user's training interactions; is_active: from user_activity (n_train > t*), not recomputed here;
    is_new: users never seen in training (default n_train == 0). Returns {"overall", "active", "inactive", "new":
    rank_metrics, "buckets": {label: rank_metrics}}; "inactive" excludes new users.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    n_train = np.asarray(n_train)
    is_active = np.asarray(is_active, dtype=bool)
    is_new = n_train == 0 if is_new is None else np.asarray(is_new, dtype=bool)
    if not (ranks.shape == n_train.shape == is_active.shape == is_new.shape) or ranks.ndim != 1:
        raise ValueError(f"summarize: ranks, n_train, is_active, is_new must be 1-d of one length; got shapes "
                         f"{ranks.shape}, {n_train.shape}, {is_active.shape}, {is_new.shape}")
    if ranks.size and (np.isnan(ranks).any() or ranks.min() < 1):
        raise ValueError("summarize: ranks must be >= 1 and not NaN")
    if (is_active & is_new).any():
        raise ValueError("summarize: a user cannot be both active and new")
    return {
        "overall": rank_metrics(ranks),
        "active": rank_metrics(ranks[is_active]),
        "inactive": rank_metrics(ranks[~is_active & ~is_new]),
        "new": rank_metrics(ranks[is_new]),
        "buckets": {label: rank_metrics(ranks[(n_train >= lo) & (n_train <= hi)]) for label, lo, hi in BUCKETS},
    }


def flatten(summary: dict, prefix: str = "test") -> dict[str, float]:
    """MLflow-safe flat names (MLflow rejects '<', '>' and '@'): test/mrr, test/active/recall_at_10,
    test/bucket_lt51/mrr. Groups without interactions are left out.
    """
    groups = {"": summary["overall"], "active/": summary["active"], "inactive/": summary["inactive"],
              "new/": summary["new"]}
    for label, metrics in summary["buckets"].items():
        safe = label.replace("<", "lt").replace(">", "gt")
        groups[f"bucket_{safe}/"] = metrics
    return {f"{prefix}/{group}{name.replace('@', '_at_')}": value for group, metrics in groups.items()
            if metrics["count"] for name, value in metrics.items()}
