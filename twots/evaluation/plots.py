"""The paper's figures as PNG files: Fig. 3, 4 and 5, and the t* sweep curve.

Figures are drawn on `matplotlib.figure.Figure` objects (Agg canvas), never through pyplot, so nothing global
changes and they are safe inside Spark drivers and tests. Every function returns the path it wrote.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

T_STAR_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def bucket_bounds(label: str) -> tuple[float, float]:
    """Inclusive n_train range of an activity bucket label of design.md: '<51', '51-100', '>300'."""
    label = label.strip()
    try:
        if label.startswith("<"):
            return 0.0, float(label[1:]) - 1
        if label.startswith(">"):
            return float(label[1:]) + 1, math.inf
        lo, hi = label.split("-")
        return float(lo), float(hi)
    except ValueError:
        raise ValueError(f"not an activity bucket label: {label!r} (expected '<51', '51-100' or '>300')") from None


def _t_star_position(buckets: list[str], t_star: int) -> float:
    """x of the inactive/active boundary (between n_train = t* and t*+1) on a categorical axis of buckets
    centred on 0..n-1; bucket i covers [i-0.5, i+0.5) linearly in n_train."""
    edge = t_star + 1
    for i, label in enumerate(buckets):
        lo, hi = bucket_bounds(label)
        if lo <= edge <= hi + 1:
            if math.isinf(hi):
                return i - 0.5
            return i - 0.5 + (edge - lo) / (hi + 1 - lo)
    return len(buckets) - 0.5


def plot_mrr_by_bucket(bucket_mrr: Mapping[str, Mapping[str, float]], t_star: int, path: str | Path,
                       title: str = "MRR by user activity") -> Path:
    """Fig. 3: grouped bars of test MRR per activity bucket (x) for each model, t* as a dashed line.

    `bucket_mrr` maps model -> bucket label -> MRR; buckets missing for a model (no such users) are left empty.
    """
    if not bucket_mrr:
        raise ValueError("plot_mrr_by_bucket: no models to plot")
    buckets = sorted({b for per in bucket_mrr.values() for b in per}, key=lambda b: bucket_bounds(b)[0])
    models = list(bucket_mrr)
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(6.0, 1.2 * len(buckets) + 0.3 * len(models)), 4.0))
    ax = fig.subplots()
    x = np.arange(len(buckets))
    for k, model in enumerate(models):
        values = [bucket_mrr[model].get(b, np.nan) for b in buckets]
        ax.bar(x - 0.4 + width * (k + 0.5), values, width, label=model)
    ax.axvline(_t_star_position(buckets, t_star), label=f"t* = {t_star}", **T_STAR_STYLE)
    ax.set_xticks(x, buckets)
    ax.set_xlabel("#interactions in training")
    ax.set_ylabel("MRR")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    return _save(fig, path)


def plot_embedding_change(changes: pd.DataFrame | Iterable[Mapping], path: str | Path,
                          title: str = "User embedding change per step (2TS)", bins: int = 24) -> Path:
    """Fig. 4: mean L2 change of the user vector per replay step, active vs inactive users.

    `changes` holds one record per (user, step): `is_active` (bool), `step` (int, 1 = the user's first step),
    `change` (float, ||u_step - u_{step-1}||_2). Steps are averaged in `bins` log-spaced bins (few users have
    many steps, so single late steps are noise); the x axis is logarithmic.
    """
    frame = pd.DataFrame(changes)
    missing = {"is_active", "step", "change"} - set(frame.columns)
    if missing:
        raise ValueError(f"plot_embedding_change: change records lack {sorted(missing)}")
    if frame.empty:
        raise ValueError("plot_embedding_change: no change records")
    edges = np.unique(np.geomspace(1, frame["step"].max() + 1, bins + 1).astype(int))
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    for active, name in ((False, "inactive"), (True, "active")):
        group = frame[frame["is_active"] == active]
        if group.empty:
            continue
        binned = group.groupby(pd.cut(group["step"], edges, right=False), observed=True)
        stats = binned.agg(step=("step", "mean"), change=("change", "mean"))
        ax.plot(stats["step"], stats["change"], marker=".", label=f"{name} users ({len(group)} steps)")
    ax.set_xscale("log")
    ax.set_xlabel("step (items the user has interacted with in the replay)")
    ax.set_ylabel("mean ||u_t - u_{t-1}||")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_activity_distribution(n_train: Iterable[int], t_star: int, path: str | Path,
                               title: str = "Training interactions per user") -> Path:
    """Fig. 5: log-log count of users per number of training interactions, t* as a dashed line.

    Users with no training interactions (new users) cannot sit on a log axis; their count is in the legend.
    """
    counts = Counter(int(n) for n in n_train)
    if any(n < 0 for n in counts):
        raise ValueError("plot_activity_distribution: negative interaction counts")
    n_new = counts.pop(0, 0)
    if not counts:
        raise ValueError("plot_activity_distribution: no user has a training interaction")
    xs = np.array(sorted(counts))
    ys = np.array([counts[x] for x in xs])
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ax.loglog(xs, ys, ".", label=f"{int(ys.sum())} users (+{n_new} new)")
    ax.axvline(max(t_star, 1), label=f"t* = {t_star}", **T_STAR_STYLE)
    ax.set_xlabel("#interactions in training")
    ax.set_ylabel("#users")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_t_star_sweep(curve: Mapping[int, float], chosen: int, path: str | Path,
                         theory: float | None = None, title: str = "Validation MRR vs t*") -> Path:
    """The t* sweep: validation MRR per candidate t*, the chosen t* and the theoretical guide t**."""
    if not curve:
        raise ValueError("plot_t_star_sweep: empty sweep curve")
    ts = sorted(curve)
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ax.plot(ts, [curve[t] for t in ts], marker="o", label="val MRR")
    ax.axvline(chosen, label=f"chosen t* = {chosen}", **T_STAR_STYLE)
    if theory is not None and math.isfinite(theory):
        ax.axvline(theory, color="tab:red", linestyle=":", label=f"t** = {theory:.1f} (Theorem 2.1)")
    ax.set_xlabel("t*")
    ax.set_ylabel("validation MRR")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_mrr_by_steps(steps_mrr: Mapping[str, Mapping[str, Mapping[str, float | None]]], path: str | Path,
                      title: str = "MRR by place in the rollout from the start state") -> Path:
    """One panel per user group (active, inactive, new): test MRR (y) per bucket of the events' place in their
    user's rollout from phi, psi or h0 (x: metrics.STEP_BUCKETS labels), one line per model.

    `steps_mrr` maps model -> group -> bucket label -> MRR (None or missing: no such events)."""
    if not steps_mrr:
        raise ValueError("plot_mrr_by_steps: no models to plot")
    groups = ("active", "inactive", "new")
    labels = list(next(iter(steps_mrr.values()))["overall"])
    fig = Figure(figsize=(13.0, 3.8))
    axes = fig.subplots(1, len(groups), sharey=True)
    x = np.arange(len(labels))
    for ax, group in zip(axes, groups):
        for model, per_group in steps_mrr.items():
            values = [np.nan if per_group.get(group, {}).get(b) is None else per_group[group][b] for b in labels]
            ax.plot(x, values, marker="o", label=model)
        ax.set_xticks(x, labels)
        ax.set_xlabel("place in the rollout")
        ax.set_title(group)
    axes[0].set_ylabel("MRR")
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    return _save(fig, path)
