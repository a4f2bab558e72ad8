"""Ranking metrics of the paper's section 5: rank of the positive among its candidates, MRR, Recall@10, NDCG@10,
overall, per user group (active / inactive / new) and per activity bucket of n_train (Fig. 3).

Two kinds of rank: the paper's sampled one (the positive among its 1 + C candidates, ranks_from_scores) and the
full-ranking one (the positive among every item of the catalogue, catalogue_ranks), which sampled metrics can
misorder (Krichene and Rendle, KDD 2020). Both use the same expected rank under a random tie break.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TOP_K = 10
METRICS = ("count", "mrr", f"recall@{TOP_K}", f"ndcg@{TOP_K}")
# Prefix of the full-ranking metrics beside the sampled ones in a group's metrics: full_mrr, full_recall@10, ...
FULL = "full_"
GROUPS = ("active", "inactive", "new", "repeat", "first_click")  # summarize's groups beside overall and buckets
# (label, lowest n_train, highest n_train) of the paper's Fig. 3; new users (n_train 0) fall in "<51".
BUCKETS = (("<51", 0, 50), ("51-100", 51, 100), ("101-200", 101, 200), ("201-300", 201, 300),
           (">300", 301, math.inf))
# (label, lowest, highest) place of an event in its user's rollout from the start state (replay.ReplayResult.steps):
# how far the state had run from phi, psi or h0 when it scored the event.
STEP_BUCKETS = (("1-10", 1, 10), ("11-20", 11, 20), ("21-50", 21, 50), (">50", 51, math.inf))


def ranks_from_scores(pos_score, neg_scores):
    """1 + #(negatives scoring higher) + #(ties)/2: the expected rank under a random tie break.

    pos_score [N], neg_scores [N, C]; numpy arrays or torch tensors (the result is of the same library).
    The positive scores 0.5 against 0.9 (higher), 0.5 (a tie) and 0.1 (lower): rank 1 + 1 + 1/2.

    >>> ranks_from_scores(np.array([0.5]), np.array([[0.9, 0.5, 0.1]]))
    array([2.5])
    """
    higher = (neg_scores > pos_score[:, None]).sum(1)
    ties = (neg_scores == pos_score[:, None]).sum(1)
    return 1 + higher + ties / 2


def catalogue_ranks(scores, positives, excluded_rows=None, excluded_items=None):
    """The rank of ranks_from_scores with every item of the catalogue as a candidate (full ranking).

    scores [B, n_items] and positives [B] (item ids) are torch tensors. (excluded_rows[k], excluded_items[k]) are
    distinct (row, item) pairs left out of row's ranking (items the user clicked before); a pair naming the row's
    positive is ignored, so a repeat click is still ranked. The positive is not its own tie.

    >>> catalogue_ranks(torch.tensor([[0.9, 0.5, 0.1, 0.5]]), torch.tensor([1]))
    tensor([2.5000])
    >>> catalogue_ranks(torch.tensor([[0.9, 0.5, 0.1, 0.5]]), torch.tensor([1]), torch.tensor([0, 0]),
    ...                 torch.tensor([0, 1]))  # item 0 excluded: only the tie with item 3 is left
    tensor([1.5000])
    """
    pos_score = scores.gather(1, positives[:, None])
    higher = (scores > pos_score).sum(1)
    ties = (scores == pos_score).sum(1) - 1
    if excluded_rows is not None and len(excluded_rows):
        other = excluded_items != positives[excluded_rows]
        rows, items = excluded_rows[other], excluded_items[other]
        excluded, pos = scores[rows, items], pos_score[rows, 0]
        higher = higher - torch.bincount(rows[excluded > pos], minlength=len(scores))
        ties = ties - torch.bincount(rows[excluded == pos], minlength=len(scores))
    return 1 + higher + ties / 2


def rank_metrics(ranks: np.ndarray, prefix: str = "") -> dict:
    """count, MRR, Recall@10, NDCG@10 of a set of ranks (metrics are None when there are no ranks), each name
    prefixed by `prefix`."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {f"{prefix}{name}": 0 if name == "count" else None for name in METRICS}
    in_top = ranks <= TOP_K
    # One relevant item: DCG = 1 / log2(rank + 1) when it is in the top K, and the ideal DCG is 1.
    return {
        f"{prefix}count": int(ranks.size),
        f"{prefix}mrr": float(np.mean(1.0 / ranks)),
        f"{prefix}recall@{TOP_K}": float(np.mean(in_top)),
        f"{prefix}ndcg@{TOP_K}": float(np.mean(np.where(in_top, 1.0 / np.log2(ranks + 1.0), 0.0))),
    }


def summary_line(summary: dict) -> str:
    """One split's summary (summarize) in a line: the overall metrics, then each user group's MRR; a group without
    events says so rather than showing a number.

    >>> summary_line(summarize(np.array([1.0, 4.0]), n_train=np.array([50, 3]), is_active=np.array([True, False])))
    'MRR 0.6250  Recall@10 1.0000  NDCG@10 0.7153  (2 events; MRR active 1.0000, inactive 0.2500, new: no events)'
    """
    overall = summary["overall"]
    if not overall["count"]:
        return "no events"
    groups = ", ".join(f"{g} {summary[g]['mrr']:.4f}" if summary[g]["count"] else f"{g}: no events"
                       for g in ("active", "inactive", "new"))
    return (f"MRR {overall['mrr']:.4f}  Recall@{TOP_K} {overall[f'recall@{TOP_K}']:.4f}  NDCG@{TOP_K} "
            f"{overall[f'ndcg@{TOP_K}']:.4f}  ({overall['count']:,} events; MRR {groups})")


def summarize(ranks, n_train, is_active, is_new=None, full_ranks=None, is_repeat=None, steps=None,
              gate=None) -> dict:
    """Metrics of one set of evaluated interactions, all arrays aligned per interaction.

    n_train: the user's training interactions; is_active: from user_activity (n_train > t*), not recomputed here;
    is_new: users never seen in training (default n_train == 0); full_ranks: the full-ranking rank of each
    interaction, NaN where it was not ranked against the catalogue (users outside the sample). Returns {"overall",
    "active", "inactive", "new": rank_metrics, "buckets": {label: rank_metrics}}; "inactive" excludes new users.
    With full_ranks each group's metrics also hold full_count, full_mrr, ... over its fully ranked interactions.
    With is_repeat (the user clicked the item before) also "repeat" and "first_click", its complement.
    With steps (each interaction's place in its user's rollout) also "by_steps": {group: {STEP_BUCKETS label:
    rank_metrics}} for overall, active, inactive and new; with gate (NaN where none) "gate": {group: mean or None}.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    n_train = np.asarray(n_train)
    is_active = np.asarray(is_active, dtype=bool)
    is_new = n_train == 0 if is_new is None else np.asarray(is_new, dtype=bool)
    full = None if full_ranks is None else np.asarray(full_ranks, dtype=np.float64)
    repeat = None if is_repeat is None else np.asarray(is_repeat, dtype=bool)
    steps = None if steps is None else np.asarray(steps)
    gate = None if gate is None else np.asarray(gate, dtype=np.float64)
    optional = [a.shape for a in (full, repeat, steps, gate) if a is not None]
    if not (ranks.shape == n_train.shape == is_active.shape == is_new.shape) or ranks.ndim != 1 \
            or any(shape != ranks.shape for shape in optional):
        raise ValueError(f"summarize: ranks, n_train, is_active, is_new (and full_ranks, is_repeat) must be 1-d of "
                         f"one length; got shapes {ranks.shape}, {n_train.shape}, {is_active.shape}, {is_new.shape}"
                         + "".join(f", {shape}" for shape in optional))
    if ranks.size and (np.isnan(ranks).any() or ranks.min() < 1):
        raise ValueError("summarize: ranks must be >= 1 and not NaN")
    if full is not None and (full[~np.isnan(full)] < 1).any():
        raise ValueError("summarize: full_ranks must be >= 1 or NaN")
    if (is_active & is_new).any():
        raise ValueError("summarize: a user cannot be both active and new")

    def group(mask):
        metrics = rank_metrics(ranks[mask])
        if full is not None:
            chosen = full[mask]
            metrics.update(rank_metrics(chosen[~np.isnan(chosen)], prefix=FULL))
        return metrics

    summary = {
        "overall": group(slice(None)),
        "active": group(is_active),
        "inactive": group(~is_active & ~is_new),
        "new": group(is_new),
        "buckets": {label: group((n_train >= lo) & (n_train <= hi)) for label, lo, hi in BUCKETS},
    }
    if repeat is not None:
        summary.update(repeat=group(repeat), first_click=group(~repeat))
    masks = {"overall": np.ones_like(is_active), "active": is_active, "inactive": ~is_active & ~is_new,
             "new": is_new}
    if steps is not None:
        summary["by_steps"] = {name: {label: rank_metrics(ranks[mask & (steps >= lo) & (steps <= hi)])
                                      for label, lo, hi in STEP_BUCKETS} for name, mask in masks.items()}
    if gate is not None:
        summary["gate"] = {name: float(np.nanmean(gate[mask])) if (mask & ~np.isnan(gate)).any() else None
                           for name, mask in masks.items()}
    return summary


def flatten(summary: dict, prefix: str = "test") -> dict[str, float]:
    """MLflow-safe flat names (MLflow rejects '<', '>' and '@'): test/mrr, test/active/recall_at_10,
    test/bucket_lt51/mrr, test/repeat/mrr, test/full_ndcg_at_10. Groups without interactions and metrics without a
    value (no fully ranked interactions in the group) are left out.
    """
    groups = {"": summary["overall"], **{f"{g}/": summary[g] for g in GROUPS if g in summary}}
    for label, metrics in summary["buckets"].items():
        groups[f"bucket_{_safe(label)}/"] = metrics
    for name, by_label in summary.get("by_steps", {}).items():
        for label, metrics in by_label.items():
            groups[f"steps_{_safe(label)}/{name}/"] = metrics
    flat = {f"{prefix}/{group}{name.replace('@', '_at_')}": value for group, metrics in groups.items()
            if metrics["count"] for name, value in metrics.items() if value is not None}
    flat.update({f"{prefix}/gate/{name}": value for name, value in summary.get("gate", {}).items()
                 if value is not None})
    return flat


def _safe(label: str) -> str:
    return label.replace("<", "lt").replace(">", "gt")
