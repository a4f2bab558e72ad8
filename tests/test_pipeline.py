"""The prepare job end to end on the real Taobao sample: config errors, row accounting, reruns, failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import PrepareConfig, PrepareError, prepare
from pipelines.activity import group_warning
from pipelines.config import STEPS
from pipelines.negatives import eval_candidates
from pipelines.pipeline import PRIORITY, concurrently, pool
from twots.config import ConfigError, load, resolve
from twots.data.tables import TABLES
from twots.training.train import untrained_parts

BASE = {"source": "taobao", "input": "x", "output": "y"}


@pytest.mark.parametrize("values, key", [
    ({"t_star": "5", "last_k": "6"}, "prepare.last_k"),
    ({"source": "criteo"}, "prepare.source"),
    ({"behaviors": "pv,click"}, "prepare.behaviors"),
    ({"eval_sample": "0"}, "prepare.eval_sample"),
    ({"negatives": "0"}, "prepare.negatives"),
    ({"min_ts": "-1"}, "prepare.min_ts"),
])
def test_bad_config_names_the_key(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve(PrepareConfig, "prepare", {**BASE, **values})


def test_k_above_t_star_says_why():
    with pytest.raises(ConfigError, match=r"K <= t\*"):
        resolve(PrepareConfig, "prepare", {**BASE, "t_star": "5", "last_k": "6"})
    with pytest.raises(ConfigError, match="train_fraction"):
        resolve(PrepareConfig, "prepare", {**BASE, "train_fraction": "0.8", "val_fraction": "0.2"})


def test_source_yaml_sets_the_taobao_window():
    cfg = load(PrepareConfig, "prepare", ["--source", "taobao", "--input", "x", "--output", "y", "--t-star", "30"])
    assert (cfg.min_ts, cfg.max_ts, cfg.t_star, cfg.last_k) == (1511539200, 1512316799, 30, 10)


def test_job_fails_before_spark_on_unwritable_output(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    result = subprocess.run([sys.executable, "jobs/prepare.py", "--source", "taobao", "--input", str(tmp_path),
                             "--output", str(blocked / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: the output folder is not writable: Not a directory ({blocked}/out): "
                                          "give --output a folder this user can write"], result.stderr


@pytest.fixture(scope="module")
def taobao_twice(spark, shared_data, tmp_path_factory):
    """Taobao sample prepared twice into the same folder; t* is above every user's count."""
    output = tmp_path_factory.mktemp("taobao")
    cfg = PrepareConfig(source="taobao", input=str(shared_data / "taobao-sample" / "UserBehavior.csv"),
                        output=str(output), t_star=500, last_k=10, negatives=5, eval_negatives=50, seed=3,
                        min_ts=1511539200, max_ts=1512316799)
    return cfg, prepare(cfg, spark), prepare(cfg, spark)


def test_rows_add_up_and_everyone_inactive_works(spark, taobao_twice):
    cfg, first, _ = taobao_twice
    assert (first["input_rows"], first["accepted"], first["rejected"]) == (10_000, 9996, {"out_of_window": 4})
    assert first["n_active"] == 0 and first["n_inactive"] + first["n_new"] == first["n_users"]
    seqs = spark.read.format("delta").load(f"{cfg.output}/sequences").toPandas()
    activity = spark.read.format("delta").load(f"{cfg.output}/user_activity").toPandas().set_index("user_id")
    assert not seqs.is_active.any()
    assert (seqs.item_ids.map(len) == activity.n_train.loc[seqs.user_id].to_numpy()).all()
    assert (seqs.neg_item_ids.map(len) == 5 * seqs.item_ids.map(len)).all() and (seqs.prev_item_id == -1).all()
    manifest = json.loads((Path(cfg.output) / "manifest.json").read_text())
    assert manifest["tables"]["users"]["version"] == 1


def test_t_star_that_leaves_nobody_active_is_said_with_the_counts_to_choose_from(spark, taobao_twice):
    cfg, first, _ = taobao_twice
    activity = spark.read.format("delta").load(f"{cfg.output}/user_activity").toPandas()
    n_train = activity.n_train[activity.n_train > 0].to_numpy()
    expected = {f"p{q}": int(np.percentile(n_train, q)) for q in (10, 25, 50, 75, 90, 99)}
    assert first["n_train_quantiles"] == {**expected, "max": int(n_train.max())}
    assert first["warnings"] == [group_warning(500, 0, len(n_train), first["n_train_quantiles"])]
    assert first["warnings"][0].startswith(f"t* = 500 leaves 0 active of {len(n_train):,} users with training events")
    # Train and compare name what of each kind goes untrained; kinds without user groups have nothing to say.
    assert [p.split(":")[0] for p in untrained_parts(spark, cfg.output, "2ts")] == ["2ts"]
    assert "the active GRU gets no training rows; no user starts from phi" in untrained_parts(spark, cfg.output,
                                                                                               "2ts")[0]
    assert untrained_parts(spark, cfg.output, "gru4rec") == []


def test_group_warning_names_the_empty_or_nearly_empty_group():
    quantiles = {"p50": 3, "max": 90}
    assert group_warning(20, 500, 500, quantiles) is None
    assert group_warning(20, 995, 5, quantiles).startswith("t* = 20 leaves 5 inactive of 1,000 users")
    both = group_warning(20, 0, 0, quantiles)
    assert both is None  # no user with training events: nothing to split
    assert "Training events per user: p50 3, max 90;" in group_warning(2, 1000, 0, quantiles)


def test_rerun_gives_identical_tables_as_a_new_version(spark, taobao_twice):
    cfg, first, second = taobao_twice
    for name in TABLES:
        assert (first["tables"][name]["version"], second["tables"][name]["version"]) == (0, 1)
        v0 = spark.read.format("delta").option("versionAsOf", 0).load(f"{cfg.output}/{name}")
        v1 = spark.read.format("delta").option("versionAsOf", 1).load(f"{cfg.output}/{name}")
        assert v0.count() == first["tables"][name]["rows"] and v0.exceptAll(v1).count() == 0, name
        assert v1.exceptAll(v0).count() == 0, name


def test_failed_run_leaves_the_previous_tables(spark, taobao_twice, tmp_path):
    cfg, _, second = taobao_twice
    too_many = cfg.model_copy(update={"eval_negatives": second["n_items"]})
    with pytest.raises(PrepareError, match=r"prepare\.eval_negatives"):
        prepare(too_many, spark)
    from delta.tables import DeltaTable
    for name in TABLES:
        assert DeltaTable.forPath(spark, f"{cfg.output}/{name}").history(1).first()["version"] == 1
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(PrepareError, match="no accepted interactions"):
        prepare(cfg.model_copy(update={"input": str(tmp_path / "empty.csv"), "output": str(tmp_path / "o")}), spark)


@pytest.mark.timeout(300)
def test_a_failed_step_fails_the_steps_that_wait_for_its_table(spark, taobao_twice, tmp_path):
    """items cannot be written (its path is a file): interactions and everything after it wait for items' rows, and
    must fail with that error rather than wait for ever; the tables nothing waits for are written."""
    cfg, _, _ = taobao_twice
    output = tmp_path / "out"
    output.mkdir()
    (output / "items").write_text("not a table")
    with pytest.raises(Exception, match="items") as failed:
        prepare(cfg.model_copy(update={"output": str(output)}), spark)
    assert not isinstance(failed.value, PrepareError)
    assert sorted(path.name for path in output.iterdir() if (path / "_delta_log").is_dir()) == ["rejects", "users"]
    assert not (output / "manifest.json").exists()


@pytest.mark.timeout(60)
def test_steps_get_the_results_and_errors_of_the_steps_they_wait_for(spark):
    seen = {}

    def fails(table):
        raise OSError("items cannot be written")

    def waits_for_failure(table):
        table("items")
        seen["after the failure"] = True

    def gives(table):
        return 41

    def adds(table):
        seen["sum"] = table("users") + 1

    with pytest.raises(OSError, match="items cannot be written"):
        concurrently({"waits": waits_for_failure, "items": fails, "adds": adds, "users": gives})
    assert seen == {"sum": 42}
    assert concurrently({"adds": adds, "users": gives}) == {"adds": None, "users": 41}


def test_scheduler_pools_sort_in_priority_order():
    """Spark's fair scheduler breaks ties between pools by name: the names must sort as PRIORITY lists the steps."""
    names = [pool(step) for step in PRIORITY]
    assert sorted(names) == names
    assert pool("parse") is None and set(PRIORITY) | {"parse", "manifest"} == set(STEPS)


def test_eval_sample_is_a_reproducible_user_sample(spark, taobao_twice):
    cfg, first, _ = taobao_twice
    interactions = spark.read.format("delta").load(f"{cfg.output}/interactions")
    full = eval_candidates(interactions, first["n_items"], 5, cfg.seed, 1.0).toPandas()
    half = eval_candidates(interactions, first["n_items"], 5, cfg.seed, 0.5).toPandas()
    again = eval_candidates(interactions, first["n_items"], 5, cfg.seed, 0.5).toPandas()
    assert half.event_id.tolist() == again.event_id.tolist()
    kept = set(half.user_id)
    assert 0.25 < len(kept) / full.user_id.nunique() < 0.75
    assert sorted(half.event_id) == sorted(full[full.user_id.isin(kept)].event_id)  # whole users, all their events
