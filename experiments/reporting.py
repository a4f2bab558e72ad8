"""Reporting: the Markdown results table (the comparison's and the demo's), results files, MLflow logging."""

from __future__ import annotations

import json
from pathlib import Path

from twots.evaluation.metrics import flatten
from twots.evaluation.plots import plot_t_star_sweep

METRICS = (("MRR", ("overall", "mrr")), ("Recall@10", ("overall", "recall@10")), ("NDCG@10", ("overall", "ndcg@10")),
           ("MRR active", ("active", "mrr")), ("MRR inactive", ("inactive", "mrr")), ("MRR new", ("new", "mrr")),
           ("MRR repeat", ("repeat", "mrr")), ("MRR first click", ("first_click", "mrr")),
           ("full MRR", ("overall", "full_mrr")), ("full Recall@10", ("overall", "full_recall@10")),
           ("full NDCG@10", ("overall", "full_ndcg@10")))
# Training columns, shown when the rows have them (the comparison's; the demo's rows hold test metrics only).
TRAINING = (("train s", "train_seconds", ".1f"), ("peak MB", "peak_memory_mb", ".0f"), ("params", "params", ","),
            ("lr", "lr", "g"), ("l2", "l2", "g"), ("epochs", "epochs", "d"))


def grid_text(grid: dict) -> str:
    return (f"lr {{{', '.join(f'{v:g}' for v in grid['lrs'])}}} x l2 {{{', '.join(f'{v:g}' for v in grid['l2s'])}}}, "
            f"up to {grid['max_epochs']} epochs, early stopping on val MRR (patience {grid['patience']})")


def tuning_lines(results: dict[str, dict]) -> list[str]:
    """What each model was given: one line when every trained model had the same grid, else one per model; the
    options beyond the paper's recipe (rows' `options`), one line per distinct set."""
    grids = {name: row["grid"] for name, row in results.items() if row.get("grid")}
    if not grids:
        return []
    distinct = {grid_text(g) for g in grids.values()}
    lines = ([f"Tuning, every trained model: {distinct.pop()}."] if len(distinct) == 1 else
             [f"Tuning of {name}: {grid_text(g)}." for name, g in grids.items()])
    options = {name: "; ".join(row["options"]) for name, row in results.items() if row.get("options")}
    for text in dict.fromkeys(options.values()):
        lines.append(f"Not the paper's recipe, {', '.join(n for n, t in options.items() if t == text)}: {text}.")
    if any(row.get("stage1") for row in results.values()):
        lines.append("Two-stage models: stage 1 is CCF's chosen setting (column `stage 1`: lr / l2 / epochs); the grid "
                     "is their stage 2's. lr, l2, epochs: the chosen setting (best val MRR).")
    return lines + [""]


def results_table(results: dict[str, dict], t_star: dict | None = None) -> str:
    """The Markdown results table of the test split: one row per model ({"test": metrics, ...training fields});
    sampled metrics, then the full-ranking ones (full ..., when evaluated), with a line saying what was fully ranked
    when the rows carry it (`full_ranking`, the comparison's rows)."""
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    def stage1(row):
        return "-" if not row["stage1"] else "{lr:g} / {l2:g} / {epochs}".format(**row["stage1"])

    metrics = [c for c in METRICS if any(c[1][1] in row["test"].get(c[1][0], {}) for row in results.values())]
    training = [c for c in TRAINING if all(c[1] in row for row in results.values())]
    with_stage1 = all("stage1" in row for row in results.values())
    head = ["model", *(c for c, _ in metrics), *(c for c, _, _ in training), *(["stage 1"] if with_stage1 else [])]
    lines = [f"t* = {t_star['t_star']} ({t_star['source']})", ""] if t_star else []
    full = next((row["full_ranking"] for row in results.values() if row.get("full_ranking")), None)
    if full:
        lines += [f"full ranking: the test events of {full['users']:,} users against all {full['n_items']:,} items, "
                  f"clicked items {'excluded' if full['exclude_seen'] else 'kept'}", ""]
    lines += tuning_lines(results)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results.items():
        cells = ["empty" if row["test"].get(group, {}).get("count") == 0 else
                 cell(row["test"].get(group, {}).get(key), ".4f") for _, (group, key) in metrics]
        lines.append("| " + " | ".join([name, *cells, *(cell(row[key], fmt) for _, key, fmt in training),
                                        *([stage1(row)] if with_stage1 else [])]) + " |")
    return "\n".join(lines) + "\n"


def diagnostics_table(results: dict[str, dict]) -> str:
    """The replay's diagnostics per model: test MRR by place in the rollout from the start state (active and
    inactive users), the mean update gate on val per group, and the mean ||user vector|| at the start and after
    the warm-up (active: phi for 2TS; inactive: psi, then the warmed-up state)."""
    def fmt(value, spec=".4f"):
        return "-" if value is None else format(value, spec)

    rows = {name: row for name, row in results.items() if "by_steps" in row["test"]}
    if not rows:
        return ""
    labels = list(next(iter(rows.values()))["test"]["by_steps"]["overall"])
    head = (["model"] + [f"MRR {g} {b}" for g in ("active", "inactive") for b in labels]
            + ["gate active", "gate inactive", "norm active start / warmed", "norm inactive start / warmed"])
    lines = ["Diagnostics: test MRR by the event's place in its user's rollout from phi, psi or h0; the GRUs' "
             "mean update gate on val; mean norm of the user vectors at the start and after the warm-up.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        steps, gate, norms = row["test"]["by_steps"], row.get("val_gate") or {}, row.get("state_norms") or {}
        cells = [fmt(steps[g][b]["mrr"]) for g in ("active", "inactive") for b in labels]
        cells += [fmt(gate.get("active"), ".3f"), fmt(gate.get("inactive"), ".3f")]
        cells += [f"{fmt(norms.get(g, {}).get('start'), '.2f')} / {fmt(norms.get(g, {}).get('warmed'), '.2f')}"
                  for g in ("active", "inactive")]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, dict], t_star: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "t_star.json").write_text(json.dumps(t_star, indent=2) + "\n")
    diagnostics = diagnostics_table(results)
    (out / "results.md").write_text(results_table(results, t_star) + ("\n" + diagnostics if diagnostics else ""))


def log_t_star(info: dict, out: Path) -> None:
    """The sweep curve, t* and t** to the active (parent) MLflow run, and the sweep plot."""
    import mlflow

    png = plot_t_star_sweep(info["curve"], info["t_star"], out / "t_star_sweep.png",
                               theory=info["theory"]["t_star"])
    mlflow.log_dict(info, "t_star.json")
    mlflow.log_artifact(str(png), "plots")
    mlflow.log_metrics({"t_star": info["t_star"], "t_star_theory": info["theory"]["t_star"]})
    for t, mrr in info["curve"].items():
        mlflow.log_metric("sweep_val_mrr", mrr, step=t)


def log_model_run(row: dict) -> None:
    import mlflow

    stage1 = {f"stage1.{k}": v for k, v in (row["stage1"] or {}).items() if k != "val_mrr"}
    mlflow.log_params({"model": row["model"], "lr": row["lr"], "l2": row["l2"], "epochs": row["epochs"],
                       "epochs_trained": row.get("epochs_trained"), **stage1,
                       "options": "; ".join(row.get("options") or []) or "none",
                       **{f"grid_{k}": json.dumps(v) for k, v in (row["grid"] or {}).items()}})
    mlflow.log_metrics({k: v for k, v in {
        **flatten(row["test"], "test"), "val_mrr": row["val_mrr"], "train_seconds": row["train_seconds"],
        "tuning_seconds": row["tuning_seconds"], "peak_memory_mb": row["peak_memory_mb"],
        "params": row["params"],
        **{f"val/gate/{g}": v for g, v in (row.get("val_gate") or {}).items()},
        **{f"state_norm/{g}/{when}": v for g, per in (row.get("state_norms") or {}).items()
           for when, v in per.items()}}.items() if v is not None})
    for trial in row["trials"]:  # the whole grid: val MRR by epoch of every (lr, l2)
        for epoch, mrr in enumerate(trial["val_mrr_by_epoch"]):
            mlflow.log_metric(f"grid_val_mrr/lr{trial['lr']:g}-l2{trial['l2']:g}", mrr, step=epoch + 1)
    mlflow.log_dict(row, "result.json")
