"""`make demo`: prepare MovieLens, train the paper's 2TS and 2TS-Plus and the default 2ts-oos, evaluate, print the
results table.

    bin/python -m experiments.demo --data ../shared/data/ml-latest-small --output demo-output

Writes the prepared tables under <output>/data (kept between runs: a second demo reuses them), the MLflow store
at sqlite:///<output>/mlflow.db (artifacts under <output>/data/mlartifacts), checkpoints and models under
<output>/data/runs/<model> (a kind that trains on views of the tables: under its view, <output>/data/views/...), and
the test metrics per model to <output>/results.json. The last model is registered, validated against @champion and
promoted (twots.mlops.registry.release), and the command that serves it is printed.
Training settings come from the `train:` section of conf/default.yaml, the gate from `registry:`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field

from experiments.reporting import results_table
from pipelines import PrepareConfig, prepare
from pipelines.views import run_folders
from twots.cli import run_job
from twots.config import Section, load, resolve
from twots.data.tables import MANIFEST, STAGE1_OFFERS
from twots.mlops.registry import RegistryConfig, connect, release, serve_command
from twots.models.kinds import KINDS, TRAINABLE
from twots.spark import get_spark
from twots.training.config import TrainConfig
from twots.training.train import train


class DemoConfig(Section):
    """End-to-end demo on a MovieLens folder (ratings.csv, movies.csv)."""

    data: str = Field(description="MovieLens folder (ml-latest-small layout)")
    output: str = Field("demo-output", description="where everything is written")
    models: list[str] = Field(["2ts", "2ts-plus", "2ts-oos"], min_length=1,
                              description="model kinds to train; the last is released")
    num_processes: int = Field(2, ge=1)


def prepare_once(source: str, output: Path, spark) -> Path:
    if (output / MANIFEST).exists():
        print(f"[demo] reusing the prepared tables in {output}", flush=True)
        return output
    prepare(resolve(PrepareConfig, "prepare", {"source": "movielens", "input": source, "output": str(output)}), spark)
    return output


def run(cfg: DemoConfig) -> dict[str, dict]:
    unknown = [m for m in cfg.models if m not in TRAINABLE]
    if unknown:
        raise ValueError(f"unknown models {unknown}; the demo trains {', '.join(TRAINABLE)}")
    started = time.perf_counter()
    output = Path(cfg.output)
    spark = get_spark("twots-demo", master="local[2]", conf={"spark.sql.shuffle.partitions": "8",
                                                              "spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    data = prepare_once(cfg.data, output / "data", spark)
    tracking_uri = f"sqlite:///{(output / 'mlflow.db').resolve()}"
    results, runs, stage1 = {}, {}, {}
    for model in cfg.models:
        tcfg = resolve(TrainConfig, "train", {"data": str(data), "model": model, "num_processes": cfg.num_processes,
                                              "tracking_uri": tracking_uri})
        # Each kind trains on its views of the prepared folder, as jobs/train.py runs it.
        replayed, folders = run_folders(spark, data, model, tcfg.two_time_scale, tcfg.max_len)
        # Stage 1 on the same rows is the same model (same config and seed give the same weights), so a kind whose
        # stage 1 reads the folder of an earlier kind's builds on that stage-1 model instead of training it again.
        offers = str(folders[STAGE1_OFFERS]) if KINDS[model].on_stage1 else None
        shared = stage1.get(offers)
        print(f"[demo] training {model}" + (f" on the stage-1 model {shared}" if shared else ""), flush=True)
        tcfg = tcfg.model_copy(update={"data": str(replayed), "stage1_model": shared})
        result = train(tcfg, spark, folders=folders)
        results[model], runs[model] = result.metrics["test"], result.run_id
        if offers is not None and shared is None:
            stage1[offers] = str(tcfg.run_dir_path() / "stage1.pt")
    (output / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nTest metrics (MovieLens latest-small, 1 positive + {_eval_negatives(data)} negatives per event):")
    print(results_table({model: {"test": test} for model, test in results.items()}), end="")
    print(f"\nMLflow runs ({tracking_uri}): " + ", ".join(f"{m} {r}" for m, r in runs.items()))
    rcfg = resolve(RegistryConfig, "registry", {"data": str(data), "tracking_uri": tracking_uri})
    champion = release(connect(rcfg), rcfg, spark, runs[cfg.models[-1]])
    print(f"[demo] {rcfg.model_name}@champion is version {champion}; serve it with:\n  {serve_command(rcfg)}")
    print(f"[demo] done in {time.perf_counter() - started:.0f}s; results in {output / 'results.json'}")
    return results


def _eval_negatives(data: Path) -> int:
    return json.loads((data / MANIFEST).read_text())["config"]["eval_negatives"]


if __name__ == "__main__":
    run_job(lambda: run(load(DemoConfig, "demo", description=__doc__)))
