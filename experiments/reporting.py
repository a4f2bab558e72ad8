"""Reporting: the Markdown results table (the comparison's and the demo's), results files, MLflow logging."""

from __future__ import annotations

import json
from pathlib import Path

METRICS = (("MRR", ("overall", "mrr")), ("Recall@10", ("overall", "recall@10")), ("NDCG@10", ("overall", "ndcg@10")),
           ("MRR active", ("active", "mrr")), ("MRR inactive", ("inactive", "mrr")), ("MRR new", ("new", "mrr")),
           ("full MRR", ("overall", "full_mrr")), ("full Recall@10", ("overall", "full_recall@10")),
           ("full NDCG@10", ("overall", "full_ndcg@10")))
# Training columns, shown when the rows have them (the comparison's; the demo's rows hold test metrics only).
TRAINING = (("train s", "train_seconds", ".1f"), ("peak MB", "peak_memory_mb", ".0f"), ("params", "params", ","),
            ("lr", "lr", "g"), ("epochs", "epochs", "d"))


def results_table(results: dict[str, dict], threshold: dict | None = None) -> str:
    """The Markdown results table of the test split: one row per model ({"test": metrics, ...training fields});
    sampled metrics, then the full-ranking ones (full ..., when evaluated), with a line saying what was fully ranked
    when the rows carry it (`full_ranking`, the comparison's rows)."""
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    metrics = [c for c in METRICS if any(c[1][1] in row["test"]["overall"] for row in results.values())]
    training = [c for c in TRAINING if all(c[1] in row for row in results.values())]
    head = ["model", *(c for c, _ in metrics), *(c for c, _, _ in training)]
    lines = [f"t* = {threshold['t_star']} ({threshold['source']})", ""] if threshold else []
    full = next((row["full_ranking"] for row in results.values() if row.get("full_ranking")), None)
    if full:
        lines += [f"full ranking: the test events of {full['users']:,} users against all {full['n_items']:,} items, "
                  f"clicked items {'excluded' if full['exclude_seen'] else 'kept'}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results.items():
        cells = [cell(row["test"][group].get(key), ".4f") for _, (group, key) in metrics]
        lines.append("| " + " | ".join([name, *cells, *(cell(row[key], fmt) for _, key, fmt in training)]) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, dict], threshold: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "threshold.json").write_text(json.dumps(threshold, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results, threshold))


def log_threshold(info: dict, out: Path) -> None:
    """The sweep curve, t* and t** to the active (parent) MLflow run, and the sweep plot."""
    import mlflow

    from twots.evaluation.plots import plot_threshold_sweep

    png = plot_threshold_sweep(info["curve"], info["t_star"], out / "threshold_sweep.png",
                               theory=info["theory"]["t_star"])
    mlflow.log_dict(info, "threshold.json")
    mlflow.log_artifact(str(png), "plots")
    mlflow.log_metrics({"t_star": info["t_star"], "t_star_theory": info["theory"]["t_star"]})
    for t, mrr in info["curve"].items():
        mlflow.log_metric("sweep_val_mrr", mrr, step=t)


def log_model_run(row: dict) -> None:
    import mlflow

    from twots.evaluation.metrics import flatten

    mlflow.log_params({"model": row["model"], "lr": row["lr"], "epochs": row["epochs"]})
    mlflow.log_metrics({k: v for k, v in {
        **flatten(row["test"], "test"), "val_mrr": row["val_mrr"], "train_seconds": row["train_seconds"],
        "peak_memory_mb": row["peak_memory_mb"], "params": row["params"]}.items() if v is not None})
    mlflow.log_dict(row, "result.json")
