import json
import os
import re
from typing import Literal

import pytest
import yaml
from pydantic import Field

from twots.cli import UserError
from twots.config import CONF_DIR, ConfigError, Section, flat, load, resolve


class Demo(Section):
    source: Literal["a", "b"] = "a"
    t_star: int = Field(20, ge=1)
    behaviors: list[str] = ["pv", "buy"]


def test_layers_and_cli_override(tmp_path):
    (tmp_path / "default.yaml").write_text("demo:\n  t_star: 30\n")
    (tmp_path / "b.yaml").write_text("demo:\n  t_star: 40\n")
    assert resolve(Demo, "demo", {}, conf_dir=tmp_path).t_star == 30
    assert resolve(Demo, "demo", {"source": "b"}, conf_dir=tmp_path).t_star == 40
    cfg = resolve(Demo, "demo", {"source": "b", "t_star": "7", "behaviors": "pv,cart"}, conf_dir=tmp_path)
    assert (cfg.t_star, cfg.behaviors) == (7, ["pv", "cart"])


def test_bad_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"demo\.t_star"):
        resolve(Demo, "demo", {"t_star": "0"}, conf_dir=tmp_path)
    (tmp_path / "default.yaml").write_text("demo:\n  treshold: 3\n")
    with pytest.raises(ConfigError, match=r"demo\.treshold"):
        resolve(Demo, "demo", {}, conf_dir=tmp_path)


def test_cli_exits_2_with_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        load(Demo, "demo", ["--source", "zzz"], conf_dir=tmp_path)
    assert exc.value.code == 2
    assert "demo.source" in capsys.readouterr().err


# ---- the jobs' own configs: what a new user types wrong -----------------------------------------------------------

def job_error(model, section, argv, capsys) -> str:
    """The message a job prints for argv: exit code 2, nothing else started."""
    with pytest.raises(SystemExit) as exc:
        load(model, section, argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_yaml_flow_style_flags_as_in_the_config_files(capsys):
    from experiments.config import CompareConfig

    cfg = load(CompareConfig, "compare", ["--data", "x", "--lrs", "[0.003, 0.01]", "--l2s", "0,1e-4",
                                          "--models", "[ccf, 2ts]", "--overrides", '{"ccf": {"max_epochs": 4}}',
                                          "--train", "{stage2: {batch_size: 16}, loader: parquet}"])
    assert cfg.lrs == [0.003, 0.01] and cfg.l2s == [0.0, 1e-4]
    assert cfg.models == ["ccf", "2ts"] and cfg.overrides["ccf"].max_epochs == 4
    assert cfg.train == {"stage2": {"batch_size": 16}, "loader": "parquet"}
    assert load(CompareConfig, "compare", ["--data", "x", "--models", "2ts, ccf"]).models == ["ccf", "2ts"]
    assert "[config] compare: conf/default.yaml + flags --data --models\n" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    # not YAML: the flag, the value and the accepted form with an example
    (["--lrs", "[0.003, 0.01"],
     r"--lrs '\[0.003, 0.01': not YAML flow style .*accepted: a list of a number > 0 \(\[a, b\] or a,b\)"),
    (["--overrides", "ccf"], r"--overrides 'ccf': expected a mapping \{key: GridOverride\}"),
    (["--lrs", "{a: 1}"], r"--lrs '\{a: 1\}': a dict, expected a list of a number > 0"),
    (["--overrides", "{ccf:4}"], r"--overrides '\{ccf:4\}': 'ccf:4' has no value; YAML needs a space after the colon"),
    # wrong type, negative sizes, unknown names, an empty list: the key, the value and the accepted form
    (["--max-epochs", "three"], (r"compare\.max_epochs = 'three' \(from command line\): Input should be a "
                                 r"valid integer.*\n\s+accepted: an integer >= 1")),
    (["--max-len", "-5"], (r"compare\.max_len = '-5' \(from command line\): Input should be greater than or equal "
                           r"to 1\n\s+accepted: an integer >= 1")),
    (["--t-star", "-3"], r"compare\.t_star = '-3' .*\n\s+accepted: an integer >= 0 or one of auto or null"),
    (["--models", "ccf,3ts"], (r"compare\.models = \['ccf', '3ts'\] .*unknown models \['3ts'\]; choose 'all' or "
                               r"from popularity, ccf")),
    (["--models", "[]"], r"compare\.models = \[\] .*the list is empty"),
    (["--lrs", "[-0.01]"], r"compare\.lrs\.0 = -0\.01 \(from command line\): Input should be greater than 0"),
    (["--l2s", "[-1]"], r"compare\.l2s\.0 = -1 .*greater than or equal to 0"),
    (["--overrides", "{sasrek: {lrs: [0.01]}}"], r"keys \['sasrek'\] are not trainable models"),
    (["--train", "{stage1: {epochs: -1}, loder: parquet}"],
     r"compare\.train .*stage1\.epochs = -1: Input should be greater than or equal to 1; loder = 'parquet': Extra"),
])
def test_compare_flag_errors_name_key_value_and_form(argv, expected, capsys):
    from experiments.config import CompareConfig

    err = job_error(CompareConfig, "compare", ["--data", "x", *argv], capsys)
    assert err.startswith("config error: ")
    assert re.search(expected, err), err


def test_train_and_prepare_errors(capsys):
    from pipelines.config import PrepareConfig
    from twots.training.config import TrainConfig

    err = job_error(TrainConfig, "train", ["--data", "x", "--model", "gru5rec", "--stage1.batch-size", "-64",
                                           "--use-gpu", "maybe"], capsys)
    assert ("train.model = 'gru5rec' (from command line): unknown model 'gru5rec'; known: ccf, sumpooling, gru4rec, "
            "sasrec, 2gru, 2ts-singlestage, 2ts, 2ts-plus") in err
    assert "train.stage1.batch_size = '-64' (from command line): Input should be greater than or equal to 1" in err
    assert "train.use_gpu = 'maybe'" in err and "accepted: true or false" in err
    err = job_error(PrepareConfig, "prepare", ["--source", "movielens", "--input", "i", "--output", "o",
                                               "--behaviors", "pv,click", "--eval-negatives", "0"], capsys)
    assert re.search(r"prepare\.behaviors\.1 = 'click' .*\n\s+accepted: a list of values among pv, buy, cart, fav",
                     err), err
    assert "prepare.eval_negatives = '0'" in err


def test_unknown_yaml_key_suggests_the_known_one(tmp_path, capsys):
    from twots.training.config import TrainConfig

    extra = tmp_path / "mine.yaml"
    extra.write_text("train:\n  stage1_epoch: 4\n  stage2: {lrr: 0.1}\n")
    err = job_error(TrainConfig, "train", ["--data", "x", "--config", str(extra)], capsys)
    assert f"train.stage1_epoch = 4 (from {extra}): not a key of 'train'; did you mean 'stage1.epochs'?" in err
    assert f"train.stage2.lrr = 0.1 (from {extra}): not a key of 'train.stage2'; did you mean 'lr'?" in err


def test_prepared_data_brings_its_source_config(tmp_path, capsys):
    """--data of a prepared MovieLens folder applies conf/movielens.yaml, as --input --source movielens does."""
    from experiments.config import CompareConfig

    data = tmp_path / "prepared"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"config": {"source": "movielens", "t_star": 20}}))
    from_data = load(CompareConfig, "compare", ["--data", str(data)])
    from_input = load(CompareConfig, "compare", ["--input", "raw", "--source", "movielens"])
    movielens = yaml.safe_load((CONF_DIR / "movielens.yaml").read_text())["compare"]
    assert from_data.train == from_input.train == movielens["train"]
    out = capsys.readouterr().out
    assert f"[config] compare: conf/default.yaml, conf/movielens.yaml (source of {data / 'manifest.json'})" in out
    # The flag still wins over the source's file; a contradicting --source is an error.
    assert load(CompareConfig, "compare", ["--data", str(data), "--train", "{stage2: {batch_size: 8}}"]).train == {
        "stage2": {"batch_size": 8}}
    err = job_error(CompareConfig, "compare", ["--data", str(data), "--source", "taobao"], capsys)
    assert f"source = 'taobao', but {data / 'manifest.json'} was prepared from 'movielens'" in err


def test_verbose_and_spark_log_level_key(tmp_path, monkeypatch):
    from twots.config import LOG_LEVEL_ENV
    from twots.training.config import TrainConfig

    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    load(TrainConfig, "train", ["--data", "x"])
    assert os.environ[LOG_LEVEL_ENV] == "WARN"
    load(TrainConfig, "train", ["--data", "x", "--verbose"])
    assert os.environ[LOG_LEVEL_ENV] == "INFO"
    extra = tmp_path / "quiet.yaml"
    extra.write_text("spark:\n  log_level: ERROR\n")
    load(TrainConfig, "train", ["--data", "x", "--config", str(extra)])
    assert os.environ[LOG_LEVEL_ENV] == "ERROR"
    extra.write_text("spark:\n  log_level: LOUD\n")
    with pytest.raises(SystemExit):
        load(TrainConfig, "train", ["--data", "x", "--config", str(extra)])


class Stage(Section):
    """A nested section."""

    lr: float = Field(0.01, gt=0)
    epochs: int = Field(3, ge=1)


class Job(Section):
    data: str | None = None
    stage1: Stage = Stage()
    stage2: Stage = Stage(lr=0.5)


def test_nested_sections_merge_key_by_key_and_take_dotted_flags(tmp_path, capsys):
    (tmp_path / "default.yaml").write_text("job:\n  stage1: {lr: 0.2, epochs: 4}\n  stage2: {epochs: 7}\n")
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"config": {"source": "b"}}))
    (tmp_path / "b.yaml").write_text("job:\n  stage1: {epochs: 9}\n")
    cfg = load(Job, "job", ["--data", str(data), "--stage2.lr", "0.03"], conf_dir=tmp_path)
    # default.yaml's stage1.lr survives the source file's stage1.epochs; a flag sets one key of stage2.
    assert (cfg.stage1.lr, cfg.stage1.epochs) == (0.2, 9)
    assert (cfg.stage2.lr, cfg.stage2.epochs) == (0.03, 7)
    assert "+ flags --data --stage2.lr\n" in capsys.readouterr().out
    assert flat(cfg) == {"data": str(data), "stage1.lr": 0.2, "stage1.epochs": 9, "stage2.lr": 0.03,
                         "stage2.epochs": 7}
    # A mapping given whole (compare's `train:` overrides) also merges into the files' values.
    assert resolve(Job, "job", {"stage1": {"lr": 0.7}}, conf_dir=tmp_path).stage1.epochs == 4
    err = job_error_in(tmp_path, ["--stage1.epochs", "0"], capsys)
    assert ("job.stage1.epochs = '0' (from command line): Input should be greater than or equal to 1\n"
            "      accepted: an integer >= 1") in err


def job_error_in(conf_dir, argv, capsys) -> str:
    with pytest.raises(SystemExit):
        load(Job, "job", argv, conf_dir=conf_dir)
    return capsys.readouterr().err


def test_sibling_section_reads_the_same_files(tmp_path):
    """Training's evaluation takes the `evaluate:` section of the files the `train:` section came from."""
    from twots.evaluation.evaluate import ReplaySettings
    from twots.training.config import TrainConfig

    extra = tmp_path / "mine.yaml"
    extra.write_text("evaluate:\n  full_users: 0\n  batch_users: 7\n")
    cfg = load(TrainConfig, "train", ["--data", "x", "--config", str(extra)])
    replay = cfg.sibling(ReplaySettings, "evaluate")
    assert (replay.full_users, replay.batch_users) == (0, 7)
    assert load(TrainConfig, "train", ["--data", "x"]).sibling(ReplaySettings, "evaluate").full_users == 1000


def test_manifests_written_before_t_star_was_named_so_read_the_same(tmp_path):
    from twots.data.tables import read_manifest

    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"source": "taobao", "threshold": 80}}))
    assert read_manifest(tmp_path)["config"] == {"source": "taobao", "t_star": 80}
    with pytest.raises(UserError, match="no such folder .*: run jobs/prepare.py"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a prepared folder, it has no manifest.json .*: run jobs/prepare.py"):
        read_manifest(tmp_path / "empty")
