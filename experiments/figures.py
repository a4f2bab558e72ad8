"""The paper's figures from the comparison's results: Fig. 3, 4 and 5 (twots.evaluation.plots draws them)."""

from __future__ import annotations

from pathlib import Path

from twots.evaluation import plots


def figures(results: dict, changes: dict, n_train, t_star: int, out: Path) -> list[Path]:
    """Fig. 3 (test MRR per activity bucket), Fig. 5 (activity distribution), Fig. 4 (2TS, else 2TS-Plus), and test
    MRR by place in the rollout from the start state, per user group (the replay's diagnostics)."""
    paths = [plots.plot_mrr_by_bucket(
        {m: {b: s["mrr"] for b, s in r["test"]["buckets"].items() if s["count"]} for m, r in results.items()},
        t_star, out / "fig3_mrr_by_activity.png"),
        plots.plot_activity_distribution(n_train, t_star, out / "fig5_activity_distribution.png")]
    by_steps = {m: {g: {b: s["mrr"] for b, s in per.items()} for g, per in r["test"]["by_steps"].items()}
                for m, r in results.items() if "by_steps" in r["test"]}
    if by_steps:
        paths.append(plots.plot_mrr_by_steps(by_steps, out / "mrr_by_rollout_steps.png"))
    if changes:
        name = "2ts" if "2ts" in changes else "2ts-plus"
        paths.append(plots.plot_embedding_change(changes[name], out / "fig4_embedding_change.png",
                                                 title=f"User embedding change per step ({name})"))
    return paths
