"""`compare --register-models best|all`: the comparison's models as versions of a registered model, ready for
validate / promote (twots.mlops.registry) to gate against @champion whatever its kind.

Every model of a registering comparison is logged as the served pyfunc in its own MLflow run (twots.mlops.packaging,
with its kind); `best` registers the one with the highest val MRR (test stays untouched by the choice), `all` every
one. A version's tags say what it is: its kind, the settings that trained it and its val/test metrics.
"""

from __future__ import annotations

from twots.mlops.registry import register
from twots.models.kinds import KINDS

TEST_METRICS = ("mrr", "recall@10", "ndcg@10")


def version_tags(row: dict, val_mrr: float, t_star: int, settings: dict) -> dict[str, str]:
    """A comparison result row (experiments.compare) as registry tags: kind, settings, metrics."""
    tags = {"compare_" + key: value for key, value in {
        "lr": row["lr"], "epochs": row["epochs"], "t_star": t_star, "params": row["params"], **settings}.items()
        if value is not None}
    tags.update({"val_mrr": f"{val_mrr:.6f}",
                 **{f"test_{m.replace('@', '_at_')}": f"{row['test']['overall'][m]:.6f}" for m in TEST_METRICS}})
    return {key: str(value) for key, value in tags.items()}


def chosen(val_mrr: dict[str, float], which: str) -> list[str]:
    """The models `which` ("best" or "all") registers: the val-best (the first in the paper's order on a tie)."""
    if which == "all":
        return list(val_mrr)
    best = max(val_mrr.values())
    return [next(name for name in val_mrr if val_mrr[name] == best)]


def settings_of(name: str, cfg, tcfg) -> dict:
    """The settings beyond lr/epochs that made `name`'s model: dimensions, and the history window of full-history
    kinds."""
    kind = KINDS[name]
    settings = {"item_dim": tcfg.item_dim, "feature_dim": tcfg.feature_dim} if kind.stages else {}
    if kind.takes_item_bias:
        settings["item_bias"] = tcfg.item_bias
    if kind.full_histories:
        settings["max_len"] = cfg.max_len
    if name == "sasrec":
        settings["sasrec_window"] = cfg.sasrec_window
    return settings


def register_results(client, model_name: str, which: str, run_ids: dict[str, str], results: dict[str, dict],
                     val_mrr: dict[str, float], t_star: int, cfg, tcfg, log=print) -> dict[str, str]:
    """Register the chosen models' runs under `model_name`, tagged (version_tags); returns model -> version."""
    versions = {}
    for name in chosen(val_mrr, which):
        tags = version_tags(results[name], val_mrr[name], t_star, settings_of(name, cfg, tcfg))
        versions[name] = register(client, model_name, run_ids[name], tags)
        log(f"[compare] registered {name} (val MRR {val_mrr[name]:.4f}) as {model_name} v{versions[name]}")
    return versions
