"""bench/train.py: the export a GPU box trains from, the per-model jobs of its `ranks` mode, and bench/gpu_train.sh
end to end in its CPU fallback (plain torchrun, 1 then 2 gloo processes, no Spark on the rank side)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_bench

from twots.models.baselines import GRU4Rec
from twots.models.kinds import load_model
from twots.models.two_time_scale import TwoTimeScaleModel
from twots.training.loaders import read_columns

TABLES = ("stage1_offers", "sequences", "full_sequences", "coldstart_sequences")


bench = load_bench("train")


def test_stage1_is_one_job_shared_by_the_kinds_built_on_it(tmp_path):
    jobs, stages_of = bench.stage_jobs(["2ts", "gru4rec", "2ts-plus"], {t: t for t in TABLES}, {}, tmp_path,
                                       epochs=1, use_gpu=False, batch={"stage1": 100, "stage2": 10})
    assert stages_of == {"2ts": [0, 1], "gru4rec": [2], "2ts-plus": [0, 3]}
    assert [j.name for j in jobs] == ["stage1", "stage2", "train", "stage2"]
    assert [j.source for j in jobs] == ["stage1_offers", "sequences", "full_sequences", "sequences"]
    assert jobs[1].previous_model == jobs[3].previous_model == jobs[0].model_path
    assert jobs[0].previous_model is None and jobs[2].previous_model is None
    assert [j.settings.batch_size for j in jobs] == [100, 10, 10, 10]
    assert [j.settings.lr for j in jobs] == [0.01, 0.005, 0.005, 0.005]
    assert len({j.model_path for j in jobs}) == 4
    with pytest.raises(SystemExit):
        bench.parse(["ranks", "--models", "2ts,bert4rec"])


def test_report_totals_count_the_shared_stage1_in_each_kind():
    def run(model, stage, world, wall, gpu=None):
        return {"model": model, "stage": stage, "world": world, "epochs": 2, "wall_s": wall, "epochs_s": wall - 0.5,
                "interactions_per_s": 1000.0, "peak_rss_mb": wall * 100, "peak_gpu_mb": gpu}

    runs = [run("2ts", "stage1", 1, 3.0, 50.0), run("2ts", "stage2", 1, 1.0, 80.0),
            run("gru4rec", "train", 1, 8.0, 40.0),
            run("2ts-plus", "stage1", 1, 3.0, 50.0), run("2ts-plus", "stage2", 1, 3.0, 90.0),
            run("gru4rec", "train", 2, 5.0)]
    rows = {(r["model"], r["stage"], r["processes"]): r for r in bench.report_rows(runs)}
    assert len(rows) == 10
    assert rows["2ts", "total", 1]["wall s"] == "4.0" and rows["2ts", "total", 1]["epochs s"] == "3.0"
    assert rows["2ts", "total", 1]["wall / 2ts"] == "1.00" and rows["gru4rec", "total", 1]["wall / 2ts"] == "2.00"
    assert rows["2ts-plus", "total", 1]["wall / 2ts"] == "1.50" and rows["2ts-plus", "total", 1]["peak GPU MB"] == 90
    assert rows["2ts", "total", 1]["peak RSS per rank MB"] == 300
    # No 2TS run with 2 processes, no GPU: nothing to divide by, no GPU peak.
    assert rows["gru4rec", "total", 2]["wall / 2ts"] == "-" and rows["gru4rec", "total", 2]["peak GPU MB"] == "-"


def table_rows(markdown: str) -> dict[tuple[str, str, int], dict]:
    lines = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0]]
    rows = [dict(zip(head, (c.strip() for c in line))) for line in lines[2:]]
    return {(r["model"], r["stage"], int(r["processes"])): r for r in rows}


@pytest.mark.timeout(900)
@pytest.mark.distributed
@pytest.mark.slow
def test_export_then_every_kind_under_torchrun(spark, small_movielens, tmp_path):
    max_len = 50
    export = bench.export(spark, small_movielens, tmp_path, max_len)
    layouts = json.loads((export / "layouts.json").read_text())
    assert sorted(layouts) == sorted(TABLES)
    assert layouts["full_sequences"]["seq_len"] == max_len and layouts["full_sequences"]["negatives"] == 10

    # Full histories: each user with training clicks, their last max_len of them; 2TS's sequences end the same way.
    activity = spark.read.format("delta").load(str(small_movielens / "user_activity")).toPandas()
    n_train = dict(zip(activity["user_id"], activity["n_train"]))
    full = read_columns(str(export / "full_sequences"), ("user_id", "item_ids"))
    lengths = dict(zip(full["user_id"].tolist(), (full["item_ids"] >= 0).sum(1).tolist()))
    assert lengths == {u: min(n, max_len) for u, n in n_train.items() if n > 0}
    assert max(n_train.values()) > max_len  # the cap was exercised
    histories = {u: row[row >= 0].tolist() for u, row in zip(full["user_id"].tolist(), full["item_ids"])}
    last_k = read_columns(str(export / "sequences"), ("user_id", "item_ids"))
    for user, row in zip(last_k["user_id"].tolist(), last_k["item_ids"]):
        items = row[row >= 0].tolist()
        assert histories[user][-len(items):] == items
    # 2ts-coldstart-all's rows: every sequences row plus one early row per active user.
    coldstart = read_columns(str(export / "coldstart_sequences"), ("user_id",))
    assert len(coldstart["user_id"]) == len(last_k["user_id"]) + int(activity["is_active"].sum())

    out, runs = tmp_path / "gpu", tmp_path / "runs"
    env = {**os.environ, "OUT": str(out), "RUNS": str(runs), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu_train.sh", str(export), "--models", "2ts,gru4rec,2ts-singlestage",
                           "--epochs", "1", "--batch1", "512", "--batch2", "32"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CPU (gloo fallback)" in proc.stdout

    rows = table_rows((out / "gpu_train.md").read_text())
    stages = {"2ts": ["stage1", "stage2"], "gru4rec": ["train"], "2ts-singlestage": ["train"]}
    assert set(rows) == {(m, s, n) for m, kinds in stages.items() for s in kinds + ["total"] for n in (1, 2)}
    for n in (1, 2):
        stage_wall = [float(rows["2ts", s, n]["wall s"]) for s in stages["2ts"]]
        twots = float(rows["2ts", "total", n]["wall s"])
        assert twots == pytest.approx(sum(stage_wall), abs=0.11) and min(stage_wall) > 0
        for model in ("gru4rec", "2ts-singlestage"):
            total = float(rows[model, "total", n]["wall s"])
            # The table rounds walls to 0.1 s and the ratio (of the unrounded walls) to 0.01.
            lowest, highest = (total - 0.05) / (twots + 0.05), (total + 0.05) / (twots - 0.05)
            assert lowest - 0.005 <= float(rows[model, "total", n]["wall / 2ts"]) <= highest + 0.005
            assert float(rows[model, "train", n]["interactions/s"].replace(",", "")) > 0

    # Each kind trained and saved its own model; 2TS's stage 2 kept the stage-1 embeddings frozen.
    run = runs / "run-2"
    assert isinstance(load_model(run / "gru4rec" / "train.pt"), GRU4Rec)
    single = load_model(run / "2ts-singlestage" / "train.pt")
    assert isinstance(single, TwoTimeScaleModel) and single.hparams["options"]["single_stage"]
    two = load_model(run / "2ts" / "stage2.pt")
    assert torch.equal(two.phi.weight, load_model(run / "2ts" / "stage1.pt").phi.weight)
