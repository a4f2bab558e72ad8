"""The ablation behind the 2TS verdict (docs/results.md): 2TS with each setting of `train.two_time_scale` alone, then
combined, each a comparison run (experiments.compare) of one model on compare's grid, on the same data, t* and
stage 1 (CCF's chosen setting: the runs share one output folder with `resume`, so stage 1 is tuned once).

    bin/python jobs/ablation.py --data /data/twots --output ablation --t-star 80

Each row names the suspect it tests (docs/model.md, "Why 2TS can trail the sequence baselines"); `ablation.md` holds
the table (test MRR overall and per user group, full-ranking MRR, val MRR, the chosen setting, stage-2 seconds) with
each row's change against the paper's 2TS, `ablation.json` every row's compare result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, field_validator

from experiments.compare import compare
from experiments.config import CompareConfig
from twots.data.tables import read_manifest


@dataclass(frozen=True)
class Row:
    """One run of the ablation: `model` with `settings` (train.two_time_scale), testing `suspect`."""

    key: str
    label: str
    suspect: str
    model: str
    settings: dict = field(default_factory=dict)


def ablation_rows(t_star: int, max_len: int, window: int) -> tuple[Row, ...]:
    """The rows, in the table's order: the paper's kinds, each setting alone, then the combined kind."""
    return (
        Row("2ts", "2ts", "-", "2ts"),
        Row("k40", "K = 40", "rollout length", "2ts", {"last_k": 40}),
        Row("k-t-star", f"K = t* = {t_star}", "rollout length", "2ts", {"last_k": t_star}),
        Row("whole-history", f"whole history (K = {max_len}), gradient cut every {window} steps",
            "rollout length, data volume", "2ts", {"last_k": max_len, "bptt_window": window}),
        Row("held-out", "out-of-sample phi (stage 1 without the last K)", "in-sample phi", "2ts", {"held_out": True}),
        Row("coldstart", "every active user's first t* items as an inactive row (2ts-coldstart-all)", "data volume",
            "2ts-coldstart-all"),
        Row("finetune", "items fine-tuned", "frozen items", "2ts", {"items": "finetune"}),
        Row("finetune-slow", "items fine-tuned at 0.1 x lr", "frozen items", "2ts",
            {"items": "finetune", "item_lr_scale": 0.1}),
        Row("input", "trainable GRU input table, frozen scoring vectors", "frozen items", "2ts", {"items": "input"}),
        Row("phi-scale", "phi / max|phi| into the GRU", "phi's scale", "2ts", {"phi_scale": True}),
        Row("2ts-plus", "2ts-plus", "-", "2ts-plus"),
        Row("plus-per-group", "2ts-plus, W per group", "one W for two groups", "2ts-plus", {"mix": "per_group"}),
        Row("plus-residual", "2ts-plus, h + W2 x_prev", "one W for two groups", "2ts-plus", {"mix": "residual"}),
        Row("plus-residual-per-group", "2ts-plus, h + W2 x_prev per group", "one W for two groups", "2ts-plus",
            {"mix": "residual_per_group"}),
        Row("singlestage", "2ts-singlestage (full histories)", "confounded ablation", "2ts-singlestage"),
        Row("singlestage-k", "2ts-singlestage-k (2TS's rows)", "confounded ablation", "2ts-singlestage-k"),
        Row("oos-k40", "out-of-sample phi, K = 40", "in-sample phi and rollout length", "2ts",
            {"held_out": True, "last_k": 40}),
        Row("oos-k40-finetune", "out-of-sample phi, K = 40, items fine-tuned", "the three together", "2ts",
            {"held_out": True, "last_k": 40, "items": "finetune"}),
        Row("combined", "2ts-oos: the row above with the cold-start rows", "all that helped, together", "2ts-oos"),
    )


ROW_KEYS = tuple(row.key for row in ablation_rows(0, 0, 1))


class AblationConfig(CompareConfig):
    """Run the ablation rows (each a comparison of one model) and write ablation.md / ablation.json."""

    rows: list[str] = Field(["all"], description="'all' or a list of the rows: " + ", ".join(ROW_KEYS))
    bptt_window: int = Field(20, ge=1, description="the whole-history row cuts the gradient every this many steps")

    @field_validator("rows")
    @classmethod
    def _known_rows(cls, rows: list[str]) -> list[str]:
        unknown = [r for r in rows if r != "all" and r not in ROW_KEYS]
        if unknown:
            raise ValueError(f"unknown rows {unknown}; known: {', '.join(ROW_KEYS)}")
        return rows


def run(cfg: AblationConfig, spark, log=print) -> list[dict]:
    """Every row's comparison, then the table (rewritten after each row). Rows share `<output>/runs`, so stage 1 is
    tuned once and a run cut off resumes."""
    out = Path(cfg.output)
    t_star = cfg.t_star if isinstance(cfg.t_star, int) else _prepared_t_star(cfg)
    rows = [r for r in ablation_rows(t_star, cfg.max_len, cfg.bptt_window) if cfg.rows == ["all"] or r.key in cfg.rows]
    results = []
    for row in rows:
        log(f"[ablation] {row.label}: {row.model} {row.settings or ''}")
        train = {**cfg.train, "two_time_scale": {**cfg.train.get("two_time_scale", {}), **row.settings}}
        row_cfg = CompareConfig(**{**cfg.model_dump(exclude={"rows", "bptt_window"}), "models": [row.model],
                                   "output": str(out / "runs"), "resume": True, "train": train})
        result = compare(row_cfg, spark, log)[row.model]
        results.append({"key": row.key, "label": row.label, "suspect": row.suspect, "model": row.model,
                        "settings": row.settings, "result": result})
        (out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "ablation.md").write_text(table(results))
    return results


def _prepared_t_star(cfg: AblationConfig) -> int:
    data = Path(cfg.data) if cfg.data else Path(cfg.output) / "runs" / "data"
    return read_manifest(data)["config"]["t_star"]


def table(results: list[dict]) -> str:
    """The Markdown table: test metrics of each row and their change against the first 2ts row."""
    def mrr(result, group="overall", key="mrr"):
        return result["test"][group][key]

    base = next((r["result"] for r in results if r["key"] == "2ts"), None)
    head = ["row", "tests", "model", "MRR", "vs 2ts", "MRR active", "MRR inactive", "MRR new", "full MRR", "val MRR",
            "lr / l2 / epochs", "stage-2 s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        res = r["result"]
        change = f"{mrr(res) / mrr(base) - 1:+.1%}" if base else "-"
        stage2 = res["train_seconds"] - (res.get("stage1_seconds") or 0)
        cells = [r["label"], r["suspect"], r["model"], f"{mrr(res):.4f}", change,
                 *(f"{mrr(res, g):.4f}" if res["test"][g]["count"] else "-" for g in ("active", "inactive", "new")),
                 f"{mrr(res, key='full_mrr'):.4f}" if res["test"]["overall"].get("full_mrr") is not None else "-",
                 f"{res['val_mrr']:.4f}", f"{res['lr']:g} / {res['l2']:g} / {res['epochs']}", f"{stage2:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
