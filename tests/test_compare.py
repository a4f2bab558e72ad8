"""The comparison job end to end: synthetic Taobao-format log -> prepare -> every model trained with
TorchDistributor (2 CPU ranks, gloo) -> online replay -> results table, MLflow runs, plots."""

import json
import shutil
import struct

import mlflow
import numpy as np
import pytest
from conftest import prepared_once

from experiments.compare import ALL_MODELS, MODEL_NAMES, CompareConfig, compare, results_table
from twots.config import ConfigError, resolve
from twots.evaluation.evaluate import ReplaySettings, evaluate
from twots.models.baselines import SASRec
from twots.models.kinds import load_model
from twots.training.trainer import should_stop

START = 1511539200  # the Taobao window (conf/taobao.yaml)
CLUSTERS, ITEMS_PER_CLUSTER = 6, 12


def write_clustered_log(path, users=150, seed=0):
    """Each user clicks only items of one category, at random times over the 9 days. History lengths are spread
    from 6 to 80 so that there are active, inactive and new users; categories have equal traffic, so counts say
    little, while any model that learns a user's category ranks about one candidate in six first."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(users):
        cluster = user % CLUSTERS
        n = int(rng.integers(6, 80))
        for ts in np.sort(rng.integers(START, START + 9 * 86400 - 1, n)):
            item = cluster * ITEMS_PER_CLUSTER + int(rng.integers(ITEMS_PER_CLUSTER))
            lines.append(f"{1000 + user},{5000 + item},{cluster},pv,{ts}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def prepare_clusters(spark, root):
    from pipelines import PrepareConfig, prepare

    write_clustered_log(root / "log.csv")
    prepare(resolve(PrepareConfig, "prepare", {"source": "taobao", "input": str(root / "log.csv"),
                                               "output": str(root / "data"), "t_star": 20, "last_k": 5,
                                               "negatives": 5, "eval_negatives": 40}), spark)


@pytest.fixture(scope="module")
def prepared_clusters(request, spark, tmp_path_factory):
    """The clustered log prepared, once per run (conftest.prepared_once; test_compare_register reads it too)."""
    return prepared_once(request, tmp_path_factory, "clusters", lambda root: prepare_clusters(spark, root)) / "data"


def png_ok(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="compare.models"):
        resolve(CompareConfig, "compare", {"data": "x", "models": "2ts,bert4rec"})
    with pytest.raises(ConfigError, match="exactly one of --data"):
        resolve(CompareConfig, "compare", {"data": "x", "input": "y", "source": "taobao"})
    with pytest.raises(ConfigError, match="compare.overrides"):
        resolve(CompareConfig, "compare", {"data": "x", "overrides": '{"popularity": {"lrs": [0.1]}}'})
    with pytest.raises(ConfigError, match="compare.overrides.2ts.lrs"):
        resolve(CompareConfig, "compare", {"data": "x", "overrides": '{"2ts": {"lrs": [0]}}'})
    with pytest.raises(ConfigError, match="compare.l2s"):
        resolve(CompareConfig, "compare", {"data": "x", "l2s": "[-1e-6]"})
    assert resolve(CompareConfig, "compare", {"data": "x", "models": "2ts,ccf"}).models == ["ccf", "2ts"]
    assert resolve(CompareConfig, "compare", {"data": "x", "t_star": "auto"}).t_star == "auto"
    # The default budget is one grid for every model (conf/default.yaml): lr x l2, up to max_epochs, patience 2.
    cfg = resolve(CompareConfig, "compare", {"data": "x", "overrides": '{"sasrec": {"max_epochs": 2}}'})
    grids = {m: cfg.grid(m).as_dict() for m in MODEL_NAMES[1:] if m != "sasrec"}
    assert all(g == {"lrs": [0.001, 0.003, 0.01], "l2s": [0.0, 1e-6], "max_epochs": 20, "patience": 2}
               for g in grids.values())
    assert cfg.grid("sasrec").max_epochs == 2 and cfg.grid("sasrec").lrs == (0.001, 0.003, 0.01)
    assert len(cfg.grid("ccf").points()) == 6


def test_early_stopping_rule():
    assert not should_stop([0.1], 1) and not should_stop([0.1, 0.2], 1)
    assert should_stop([0.1, 0.2, 0.15], 1) and should_stop([0.2, 0.2], 1)  # equal is not better
    assert not should_stop([0.2, 0.1], 2) and should_stop([0.2, 0.1, 0.19], 2)
    assert not should_stop([0.2, 0.1, 0.3], 1)


# The paper's 9 models (the variants run by name, not in 'all') in three TorchDistributor launches (compare.launch:
# all): CCF's grid, the t* sweep, then every other trained model.
@pytest.mark.timeout(1800)
@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
def test_every_model_beats_popularity_end_to_end(spark, prepared_clusters, tmp_path, capsys):
    out = tmp_path / "compare"
    cfg = resolve(CompareConfig, "compare", {
        "data": str(prepared_clusters), "output": str(out), "models": "all", "launch": "all",
        "lrs": "[0.03]", "l2s": "[0]",
        "overrides": '{"ccf": {"max_epochs": 2}}', "max_epochs": "1", "max_len": "60", "sasrec_window": "16",
        "t_star": "auto", "t_star_candidates": "[10, 20]",
        "train": '{"item_dim": 16, "feature_dim": 4, "stage1": {"batch_size": 256}, "stage2": {"batch_size": 16}, '
                 '"loader": "parquet"}'})
    results = compare(cfg, spark)

    launches = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[compare] training in one")]
    # CCF's grid, the t* sweep, the out-of-sample stage 1 of 2ts-oos (at CCF's setting), then every model's grid.
    assert [line.count(" (up to ") for line in launches] == [1, 2, 1, 8], launches
    assert "ccf/lr0.03-l20 (up to" in launches[0] and all(f"sweep/t{t} (up to" in launches[1] for t in (10, 20))
    assert "stage1-held-out-k40/lr0.03-l20 (up to" in launches[2]
    assert all(f"{name}/lr0.03-l20 (up to" in launches[3] for name in ALL_MODELS[2:])
    assert list(results) == list(ALL_MODELS)
    floor = results["popularity"]["test"]["overall"]["mrr"]
    for name, row in results.items():
        assert row["test"]["overall"]["count"] == results["popularity"]["test"]["overall"]["count"]
        if name != "popularity":
            assert row["test"]["overall"]["mrr"] > floor + 0.05, (name, row["test"]["overall"]["mrr"], floor)
            assert row["train_seconds"] > 0 and row["peak_memory_mb"] > 10 and row["params"] > 0
            assert row["epochs"] in (1, 2) and row["val_mrr"] == max(row["trials"][0]["val_mrr_by_epoch"])
    assert len(results["ccf"]["trials"][0]["val_mrr_by_epoch"]) == 2  # every epoch replayed on val
    # 2TS's time includes the stage 1 it shares with CCF.
    assert results["2ts"]["train_seconds"] > results["ccf"]["train_seconds"]
    # SASRec attends over compare's window (16, not the class default 50): its position table sizes the model.
    manifest = json.loads((prepared_clusters / "manifest.json").read_text())
    sasrec = SASRec(manifest["n_items"], manifest["n_features"], manifest["max_features_per_item"], item_dim=16,
                    feature_dim=4, window=16)
    assert results["sasrec"]["params"] == sum(p.numel() for p in sasrec.parameters())

    saved = json.loads((out / "results.json").read_text())
    assert saved["2ts-plus"]["test"]["overall"]["mrr"] == pytest.approx(results["2ts-plus"]["test"]["overall"]["mrr"])
    table, diagnostics = (out / "results.md").read_text().split("Diagnostics:")
    assert table.count("\n| ") == len(ALL_MODELS) + 1 and "| 2ts-plus |" in table
    # The replay's diagnostics, one row per model: GRUs have an update gate, popularity and CCF none.
    assert diagnostics.count("\n| ") == len(ALL_MODELS) + 1
    gate = {line.split(" | ")[0].strip("| "): line.split(" | ")[9] for line in diagnostics.splitlines()[4:]}
    assert gate["popularity"] == gate["ccf"] == "-" and 0 < float(gate["2ts"]) < 1 and 0 < float(gate["gru4rec"]) < 1
    steps = saved["2ts"]["test"]["by_steps"]
    assert sum(b["count"] for b in steps["overall"].values()) == saved["2ts"]["test"]["overall"]["count"]
    assert saved["2ts"]["state_norms"]["active"]["start"] > 0 and saved["2ts"]["val_gate"]["active"] is not None
    for fig in ("fig3_mrr_by_activity.png", "fig4_embedding_change.png", "fig5_activity_distribution.png",
                "t_star_sweep.png", "mrr_by_rollout_steps.png"):
        png_ok(out / fig)

    # t*: the sweep tried both candidates on val and kept the better; t** is estimated alongside.
    sweep = json.loads((out / "t_star.json").read_text())
    curve = {int(t): mrr for t, mrr in sweep["curve"].items()}
    assert sorted(curve) == [10, 20] and sweep["t_star"] == max(curve, key=curve.get)
    assert all(0 < mrr < 1 for mrr in curve.values())
    assert np.isfinite(sweep["theory"]["t_star"]) and sweep["theory"]["q"] > 0
    assert f"t* = {sweep['t_star']} (auto)" in table

    mlflow.set_tracking_uri(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["twots-compare"])
    parent = runs[runs["tags.mlflow.runName"] == "compare"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert sorted(children["tags.mlflow.runName"]) == sorted(ALL_MODELS)
    child = children[children["tags.mlflow.runName"] == "2ts"].iloc[0]
    assert child["metrics.test/mrr"] == pytest.approx(results["2ts"]["test"]["overall"]["mrr"])
    sweep = mlflow.MlflowClient().get_metric_history(parent["run_id"].iloc[0], "sweep_val_mrr")
    assert {m.step: m.value for m in sweep} == pytest.approx(curve)


def small_grid(data, out, two_ts_l2s="[0]", stage2_batch_size=16, **more) -> CompareConfig:
    """CCF on lr 0.05 x l2 {0, 0.01} up to 3 epochs, 2TS on lr 0.05 x `two_ts_l2s` up to 2, small dimensions."""
    return resolve(CompareConfig, "compare", {
        "data": str(data), "output": str(out), "models": "ccf,2ts", "lrs": "[0.05]",
        "l2s": "[0, 0.01]", "max_epochs": "3", "patience": "1",
        "overrides": f'{{"2ts": {{"l2s": {two_ts_l2s}, "max_epochs": 2}}}}',
        "train": '{"item_dim": 16, "feature_dim": 4, "stage1": {"batch_size": 256}, '
                 f'"stage2": {{"batch_size": {stage2_batch_size}}}, "loader": "parquet"}}', **more})


@pytest.fixture(scope="module")
def small_grid_run(spark, prepared_clusters, tmp_path_factory):
    """`small_grid` compared once: (its output folder, its results, spark, the prepared data). Read it; copy it to
    change it."""
    out = tmp_path_factory.mktemp("small-grid") / "compare"
    return out, compare(small_grid(prepared_clusters, out), spark), spark, prepared_clusters


@pytest.mark.timeout(1800)
@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
def test_grid_with_early_stopping_records_each_models_setting(small_grid_run):
    """CCF on a 1 x 2 grid (l2 0 and 0.01) up to 3 epochs, 2TS on its own 1 x 1 grid up to 2 epochs on CCF's chosen
    stage 1: every grid point stops by the rule, keeps its best epoch, and the settings reach results and MLflow."""
    out, results, spark, prepared_clusters = small_grid_run

    ccf, two = results["ccf"], results["2ts"]
    assert [(t["lr"], t["l2"]) for t in ccf["trials"]] == [(0.05, 0.0), (0.05, 0.01)]
    assert [(t["lr"], t["l2"]) for t in two["trials"]] == [(0.05, 0.0)]
    for name, row in results.items():
        grid = row["grid"]
        for trial in row["trials"]:
            mrr = trial["val_mrr_by_epoch"]
            # Trained until the rule fired or the budget ran out, and not an epoch longer.
            assert all(not should_stop(mrr[:k], 1) for k in range(1, len(mrr)))
            assert len(mrr) == grid["max_epochs"] or should_stop(mrr, 1)
            assert trial["stopped_early"] == (len(mrr) < grid["max_epochs"])
            assert trial["best_epoch"] == 1 + max(range(len(mrr)), key=mrr.__getitem__)
            run = out / "runs" / name / f"lr{trial['lr']:g}-l2{trial['l2']:g}" / "checkpoints"
            assert len(list(run.glob("*.pt"))) == len(mrr)  # no epoch trained past the stop
        best = max(row["trials"], key=lambda t: max(t["val_mrr_by_epoch"]))
        assert (row["lr"], row["l2"], row["epochs"]) == (best["lr"], best["l2"], best["best_epoch"])
        assert row["val_mrr"] == max(best["val_mrr_by_epoch"])
        assert row["epochs_trained"] == len(best["val_mrr_by_epoch"])
        assert row["tuning_seconds"] == pytest.approx(sum(t["seconds"] for t in row["trials"]))
    # The ranks' val replay (after every epoch, inside the launch) is the driver's: CCF's chosen epoch, saved as the
    # stage-1 model, replayed here gives the val MRR the ranks recorded for it.
    stage1 = load_model(str(out / "models" / "stage1.pt"))
    val = evaluate(stage1, prepared_clusters, spark, ReplaySettings(splits=["val"]))["metrics"]["val"]
    assert val["overall"]["mrr"] == pytest.approx(ccf["val_mrr"], abs=1e-9)
    assert ccf["grid"] == {"lrs": [0.05], "l2s": [0.0, 0.01], "max_epochs": 3, "patience": 1}
    assert two["grid"] == {"lrs": [0.05], "l2s": [0.0], "max_epochs": 2, "patience": 1}
    # L2 reaches the ranks: the two CCF points start from the same weights and data, and part after one epoch.
    assert ccf["trials"][0]["val_mrr_by_epoch"][0] != ccf["trials"][1]["val_mrr_by_epoch"][0]
    # 2TS builds on the stage 1 CCF chose.
    assert ccf["stage1"] is None
    assert two["stage1"] == {k: ccf[k] for k in ("lr", "l2", "epochs", "val_mrr")}

    saved = json.loads((out / "results.json").read_text())
    assert saved["2ts"]["stage1"] == two["stage1"] and saved["ccf"]["trials"] == ccf["trials"]
    table = (out / "results.md").read_text()
    assert "Tuning of ccf: lr {0.05} x l2 {0, 0.01}, up to 3 epochs, early stopping on val MRR (patience 1)." in table
    assert "Tuning of 2ts: lr {0.05} x l2 {0}, up to 2 epochs" in table
    stage1 = f"{ccf['lr']:g} / {ccf['l2']:g} / {ccf['epochs']}"
    assert f" | {two['lr']:g} | {two['l2']:g} | {two['epochs']} | {stage1} |" in table

    mlflow.set_tracking_uri(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["twots-compare"])
    child = runs[runs["tags.mlflow.runName"] == "ccf"].iloc[0]
    assert float(child["params.l2"]) == ccf["l2"] and int(child["params.epochs"]) == ccf["epochs"]
    assert json.loads(child["params.grid_l2s"]) == [0.0, 0.01]
    history = mlflow.MlflowClient().get_metric_history(child["run_id"], "grid_val_mrr/lr0.05-l20.01")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        ccf["trials"][1]["val_mrr_by_epoch"])
    child = runs[runs["tags.mlflow.runName"] == "2ts"].iloc[0]
    assert int(child["params.stage1.epochs"]) == ccf["epochs"] and float(child["params.stage1.l2"]) == ccf["l2"]


@pytest.mark.timeout(1800)
@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
def test_resume_keeps_finished_trials_and_trains_the_rest(small_grid_run, tmp_path):
    """A grid resumed in its --output (copied elsewhere first): trials finished under the same key are read back, not
    trained; a trial the earlier run did not finish, a new grid point, and trials whose training settings changed
    are trained."""
    done, first, spark, prepared_clusters = small_grid_run
    out = tmp_path / "compare"
    shutil.copytree(done, out)
    (out / "runs" / "ccf" / "lr0.05-l20.01" / "stage.json").unlink()  # as if the run was killed in that trial

    def resumed(**settings):
        lines = []
        results = compare(small_grid(prepared_clusters, out, resume="true", **settings), spark, log=lines.append)
        return results, [line.split(": ", 1)[1] for line in lines if "training in one launch" in line], lines

    second, launches, lines = resumed(two_ts_l2s="[0, 0.01]")
    assert launches == ["ccf/lr0.05-l20.01 (up to 3 epochs at lr 0.05, l2 0.01)",
                        "2ts/lr0.05-l20.01 (up to 2 epochs at lr 0.05, l2 0.01)"]
    assert "[compare] ccf/lr0.05-l20.01: the earlier run did not finish it; training it again" in lines
    assert any(line.startswith("[compare] ccf/lr0.05-l20 (finished before, kept): val MRR") for line in lines)
    # Kept trials carry their recorded epochs and seconds; the one trained again is the same (seeded) training, so
    # CCF chooses the same stage 1, and the 2TS point on it is kept.
    assert second["ccf"]["trials"][0] == first["ccf"]["trials"][0]
    assert ({**second["ccf"]["trials"][1], "seconds": None} == {**first["ccf"]["trials"][1], "seconds": None})
    assert second["2ts"]["trials"][0] == first["2ts"]["trials"][0]
    assert [(t["lr"], t["l2"]) for t in second["2ts"]["trials"]] == [(0.05, 0.0), (0.05, 0.01)]
    assert second["ccf"]["test"] == first["ccf"]["test"]

    third, launches, lines = resumed(stage2_batch_size=8)
    assert launches == ["2ts/lr0.05-l20 (up to 2 epochs at lr 0.05, l2 0)"]
    assert "[compare] 2ts/lr0.05-l20: the earlier run's trial differs in train; training it again" in lines
    assert third["ccf"]["trials"] == second["ccf"]["trials"]
    assert third["2ts"]["trials"][0]["val_mrr_by_epoch"] != first["2ts"]["trials"][0]["val_mrr_by_epoch"]


def test_results_table_marks_missing_groups():
    metrics = {"mrr": 0.5, "recall@10": 0.9, "ndcg@10": 0.6, "full_mrr": 0.05, "full_recall@10": 0.2,
               "full_ndcg@10": 0.1}
    row = {"test": {g: dict(metrics) for g in ("overall", "active", "inactive")},
           "train_seconds": 1.0, "peak_memory_mb": None, "params": 1234, "lr": None, "l2": None, "epochs": None,
           "grid": None, "stage1": None,
           "full_ranking": {"users": 300, "events": 4000, "seconds": 2.0, "exclude_seen": False, "n_items": 9000}}
    row["test"]["new"] = {name: None for name in metrics}
    grid = {"lrs": [0.001, 0.01], "l2s": [0.0, 1e-6], "max_epochs": 5, "patience": 1}
    two = {**row, "lr": 0.01, "l2": 1e-6, "epochs": 3, "grid": grid,
           "stage1": {"lr": 0.001, "l2": 0.0, "epochs": 4, "val_mrr": 0.1}}
    table = results_table({"popularity": row, "ccf": {**two, "stage1": None}, "2ts": two},
                          {"t_star": 20, "source": "prepared"})
    assert ("| popularity | 0.5000 | 0.9000 | 0.6000 | 0.5000 | 0.5000 | - | 0.0500 | 0.2000 | 0.1000 | 1.0 | - | "
            "1,234 | - | - | - | - |") in table
    assert ("| 2ts | 0.5000 | 0.9000 | 0.6000 | 0.5000 | 0.5000 | - | 0.0500 | 0.2000 | 0.1000 | 1.0 | - | 1,234 | "
            "0.01 | 1e-06 | 3 | 0.001 / 0 / 4 |") in table
    assert "the test events of 300 users against all 9,000 items, clicked items kept" in table
    # A group without test events (t* left it empty) says so; a group the row does not report stays "-".
    empty = {**row, "test": {**row["test"], "active": {"count": 0, **{name: None for name in metrics}}}}
    assert "| popularity | 0.5000 | 0.9000 | 0.6000 | empty | 0.5000 | - | 0.0500 |" in results_table(
        {"popularity": empty})
    assert ("Tuning, every trained model: lr {0.001, 0.01} x l2 {0, 1e-06}, up to 5 epochs, early stopping on val MRR "
            "(patience 1).") in table
    # Another budget for one model is named per model.
    table = results_table({"ccf": {**two, "grid": {**grid, "max_epochs": 2}}, "2ts": two})
    assert "Tuning of ccf: lr {0.001, 0.01} x l2 {0, 1e-06}, up to 2 epochs" in table
    assert "Tuning of 2ts: lr {0.001, 0.01} x l2 {0, 1e-06}, up to 5 epochs" in table
    assert "Not the paper's" not in table
    # Options beyond the paper's recipe: one line per distinct set, naming its models.
    bias, negs = "item bias b_i (train.item_bias)", "negatives in proportion to train count^0.75 (prepare.sampler)"
    table = results_table({"ccf": {**two, "options": [bias, negs]}, "gru4rec": {**two, "options": [negs]},
                           "2ts": {**two, "options": [bias, negs]}})
    assert f"Not the paper's recipe, ccf, 2ts: {bias}; {negs}." in table
    assert f"Not the paper's recipe, gru4rec: {negs}." in table


@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
def test_ablation_rows_share_stage1_and_pass_their_settings(spark, prepared_clusters, tmp_path, capsys):
    """Three rows of the ablation: the second keeps the first's stage 1 (one folder, resume), trains 2TS with its
    setting, the third 2TS-Plus with a setting 2TS cannot take, and the table compares them with the paper's 2TS; a
    setting that does not fit a kind fails at start."""
    from experiments.ablation import AblationConfig, run, table

    out = tmp_path / "ablation"
    cfg = resolve(AblationConfig, "compare", {
        "data": str(prepared_clusters), "output": str(out), "rows": "2ts,finetune,plus-per-group", "lrs": "[0.03]",
        "l2s": "[0]", "max_epochs": "2", "t_star": "10",
        "train": '{"item_dim": 16, "feature_dim": 4, "stage1": {"batch_size": 256}, "stage2": {"batch_size": 16}, '
                 '"loader": "parquet"}'})
    results = run(cfg, spark)
    lines = capsys.readouterr().out.splitlines()
    assert [r["key"] for r in results] == ["2ts", "finetune", "plus-per-group"]
    assert any("ccf/lr0.03-l20 (finished before, kept)" in line for line in lines), lines
    # The last row's 2TS (its trial folder is the first row's, trained again under another key) fine-tuned its items.
    assert load_model(str(out / "runs" / "runs" / "2ts" / "lr0.03-l20" / "2ts.pt")).options.items == "finetune"
    saved = json.loads((out / "ablation.json").read_text())
    assert load_model(str(out / "runs" / "runs" / "2ts-plus" / "lr0.03-l20" / "2ts-plus.pt")).options.mix == "per_group"
    assert [r["settings"] for r in saved] == [{}, {"items": "finetune"}, {"mix": "per_group"}]
    md = (out / "ablation.md").read_text().splitlines()
    assert len(md) == 5 and md[2].startswith("| 2ts | - | 2ts |") and "| +0.0% |" in md[2]
    change = saved[1]["result"]["test"]["overall"]["mrr"] / saved[0]["result"]["test"]["overall"]["mrr"] - 1
    assert f"| {change:+.1%} |" in md[3]
    assert table(saved) == (out / "ablation.md").read_text()
    with pytest.raises(ConfigError, match="model 2ts: TwoTimeScaleOptions: mix='residual' is 2TS-Plus's W"):
        resolve(AblationConfig, "compare", {"data": "x", "models": "2ts",
                                            "train": '{"two_time_scale": {"mix": "residual"}}'})
