"""What a job prints when it fails as expected, or not, and what it silences (twots.cli).

Every job of jobs/ is run here, in this process as `python jobs/<job>.py ...` would run it, on each failure it
expects: exit status 2 and one line on stderr, `error: <what> (<where>): <what to do>`. Most fail before Spark
starts; the few that Spark itself detects (an input it cannot read, an input with no accepted line, a folder with
no tables to profile) run on the test session. tests/test_commands.py runs the issue's case through spark-submit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO, run_job_here

from twots.cli import HARMLESS_WARNINGS, UserError, run_job
from twots.config import LOG_LEVEL_ENV, load
from twots.training.config import TrainConfig

NO_RUN = "0" * 32
NO_SUCH_FOLDER = "error: no such folder ({missing}): run jobs/prepare.py with --output {missing} first"
NOT_PREPARED = ("error: not a prepared folder, it has no manifest.json ({empty}): run jobs/prepare.py with --output "
                "{empty} first")
NO_INPUT = "error: no such file or folder ({missing}): give --input an existing file, folder of part files or glob"
NOT_WRITABLE = ("error: the output folder is not writable: Not a directory ({file}/out): give --output a folder this "
                "user can write")
NO_MLFLOW_RUN = (f"error: no such MLflow run (run {NO_RUN} in sqlite:///{{fake}}/mlflow.db): give the run id "
                 "jobs/train.py printed ('run <id>: model ...') and the same --data or --tracking-uri")

# (job, argv, the error line); {name}: the folders of the `folders` fixture.
BEFORE_SPARK = [
    ("ablation", ["--data", "{empty}"], NOT_PREPARED),
    ("compare", ["--data", "{missing}"], NO_SUCH_FOLDER),
    ("compare", ["--source", "movielens", "--input", "{missing}"], NO_INPUT),
    ("data_profile", ["--input", "{missing}"], NO_INPUT),
    ("evaluate", ["--data", "{missing}", "--run-id", NO_RUN], NO_SUCH_FOLDER),
    ("evaluate", ["--data", "{fake}", "--run-id", NO_RUN], NO_MLFLOW_RUN),
    ("generate", ["--rows", "100", "--output", "{file}/out"], NOT_WRITABLE),
    ("prepare", ["--source", "movielens", "--input", "{missing}", "--output", "{out}"], NO_INPUT),
    ("prepare", ["--source", "movielens", "--input", "{empty}", "--output", "{file}/out"], NOT_WRITABLE),
    ("promote", ["--data", "{missing}"], NO_SUCH_FOLDER),
    ("recommend", ["--data", "{fake}", "--output", "{out}"],
     "error: no such registered model (models:/twots@champion in sqlite:///{fake}/mlflow.db): register a training "
     "run (jobs/register.py), then validate and promote it"),
    ("register", ["--data", "{fake}"],
     "error: register needs the training run (registry.run_id): give --run-id <id>, the id jobs/train.py printed"),
    ("register", ["--data", "{missing}", "--run-id", NO_RUN], NO_SUCH_FOLDER),
    ("register", ["--data", "{fake}", "--run-id", NO_RUN], NO_MLFLOW_RUN),
    ("register", ["--data", "{fake}", "--run-id", "{modelless_run}"],
     "error: the run logged no model named 'model' (run {modelless_run}): give the run of a jobs/train.py that "
     "finished (it logs the model last)"),
    ("train", ["--data", "{missing}"], NO_SUCH_FOLDER),
    ("train", ["--data", "{empty}"], NOT_PREPARED),
    ("train", ["--data", "{fake}", "--model", "2ts", "--stage1-model", "{missing}/stage1.pt"],
     "error: no such file (--stage1-model {missing}/stage1.pt): give the stage1.pt of an earlier run "
     "(<data>/runs/<model>/)"),
    ("validate", ["--data", "{missing}"], NO_SUCH_FOLDER),
    ("validate", ["--data", "{fake}"],
     "error: no version of twots is registered (sqlite:///{fake}/mlflow.db): register a training run first: "
     "jobs/register.py --run-id <id>"),
    ("validate", ["--data", "{fake}", "--version", "7"],
     "error: no such registered model (models:/twots/7 in sqlite:///{fake}/mlflow.db): register a training run "
     "(jobs/register.py), then validate and promote it"),
]
# The same, where Spark finds the failure: the error line starts so (it goes on with Spark's words).
ON_SPARK = [
    ("prepare", ["--source", "taobao", "--input", "{empty_csv}", "--output", "{out}"],
     "error: no accepted interactions in the input ({empty_csv}): check --input and --source taobao (lines "
     "rejected, by reason: none)"),
    ("prepare", ["--source", "movielens", "--input", "{empty}", "--output", "{out}"],
     "error: the input cannot be read: [PATH_NOT_FOUND] Path does not exist"),
    ("data_profile", ["--input", "{empty}"],
     "error: not a prepared output folder, it has no interactions Delta table ({empty}): give --source for a raw "
     "log"),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("job-errors")
    fake = root / "fake"   # what the jobs' checks before Spark see of a prepared folder: its manifest
    fake.mkdir()
    (fake / "manifest.json").write_text(json.dumps({"config": {"source": "movielens"}}))
    (root / "empty").mkdir()
    (root / "file").write_text("not a folder")
    (root / "empty.csv").write_text("")
    mlflow.set_tracking_uri(f"sqlite:///{fake}/mlflow.db")
    with mlflow.start_run() as run:   # a run that logged no model (train stopped before its end)
        pass
    return {"missing": str(root / "missing"), "empty": str(root / "empty"), "file": str(root / "file"),
            "fake": str(fake), "out": str(root / "out"), "empty_csv": str(root / "empty.csv"),
            "modelless_run": run.info.run_id}


def isolated(monkeypatch) -> None:
    """What load() sets in the environment (warning filters, Spark's log level) is undone after the test."""
    monkeypatch.setenv("PYTHONWARNINGS", "")
    monkeypatch.setenv(LOG_LEVEL_ENV, "WARN")


def failure(monkeypatch, capsys, job: str, argv: list[str], folders: dict[str, str]) -> list[str]:
    """The job's stderr lines; it must exit with status 2."""
    isolated(monkeypatch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_job_here(monkeypatch, job, *[arg.format(**folders) for arg in argv])
    assert exited.value.code == 2
    return capsys.readouterr().err.splitlines()


def test_every_job_has_its_expected_failures_in_the_table():
    assert {job for job, _, _ in BEFORE_SPARK + ON_SPARK} == {path.stem for path in (REPO / "jobs").glob("*.py")}


@pytest.mark.mlflow
@pytest.mark.parametrize("job, argv, line", BEFORE_SPARK, ids=[f"{c[0]}: {c[2][7:40]}" for c in BEFORE_SPARK])
def test_an_expected_failure_before_spark_is_one_line(folders, monkeypatch, capsys, job, argv, line):
    assert failure(monkeypatch, capsys, job, argv, folders) == [line.format(**folders)]


@pytest.mark.parametrize("job, argv, start", ON_SPARK, ids=[f"{c[0]}: {c[2][7:40]}" for c in ON_SPARK])
def test_an_expected_failure_spark_finds_is_one_line(spark, folders, monkeypatch, capsys, job, argv, start):
    keys = ("spark.sql.shuffle.partitions", "spark.sql.files.minPartitionNum",
            "spark.sql.adaptive.coalescePartitions.enabled")
    before = {key: spark.conf.get(key, None) for key in keys}   # prepare sets them on the test session
    try:
        lines = failure(monkeypatch, capsys, job, argv, folders)
    finally:
        for key, value in before.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)
    assert len(lines) == 1 and lines[0].startswith(start.format(**folders)), lines


def test_an_unexpected_error_keeps_its_traceback(spark, folders, monkeypatch):
    """A manifest without the keys prepare writes is no failure a user is told about in a line: train's KeyError
    leaves run_job as it was raised, for the interpreter to print with its traceback."""
    isolated(monkeypatch)
    with pytest.raises(KeyError, match="t_star"):
        run_job_here(monkeypatch, "train", "--data", folders["fake"])
    with pytest.raises(ZeroDivisionError):
        run_job(lambda: 1 / 0)


def test_a_user_error_is_kept_on_one_line():
    err = UserError("the input cannot be read:\n  [PATH_NOT_FOUND]\n", "/x  y/\nratings*", "give --input\n a file")
    assert str(err) == "the input cannot be read: [PATH_NOT_FOUND] (/x  y/ ratings*): give --input a file"


def test_the_harmless_warnings_are_silenced_in_the_processes_a_job_starts(monkeypatch):
    """The filters load() puts in PYTHONWARNINGS hold in a child process (a training rank) from its start, for the
    module and category named only; --verbose leaves them out."""
    isolated(monkeypatch)
    load(TrainConfig, "train", ["--data", "x", "--verbose"])
    assert os.environ["PYTHONWARNINGS"] == ""
    load(TrainConfig, "train", ["--data", "x"])
    assert os.environ["PYTHONWARNINGS"].split(",") == [h.option() for h in HARMLESS_WARNINGS]
    issue = ("import warnings\n"
             "for category, module, message in [(FutureWarning, 'petastorm.reader', 'legacy dataset'),\n"
             "        (UserWarning, 'petastorm.reader', 'shard_seed was deprecated and will be removed'),\n"
             "        (UserWarning, 'petastorm.reader', 'another warning'),\n"
             "        (FutureWarning, 'petastorm.readers', 'legacy dataset'),\n"
             "        (RuntimeWarning, 'petastorm.pytorch', 'The given NumPy array is not writable')]:\n"
             "    warnings.warn_explicit(message, category, 'x.py', 1, module=module)\n")
    shown = subprocess.run([sys.executable, "-c", issue], capture_output=True, text=True, check=True).stderr
    assert shown.splitlines() == ["x.py:1: UserWarning: another warning", "x.py:1: FutureWarning: legacy dataset",
                                  "x.py:1: RuntimeWarning: The given NumPy array is not writable"]


def test_too_few_rows_for_a_batch_fail_before_the_ranks_start(spark, small_movielens, monkeypatch, capsys):
    argv = ["--data", str(small_movielens), "--model", "ccf", "--stage1.batch-size", "1000000", "--evaluate", "false"]
    (line,) = failure(monkeypatch, capsys, "train", argv, {})
    assert line.startswith("error: stage1's ") and "training rows (per rank: [" in line
    assert line.endswith("are fewer than one batch per rank (--stage1.batch-size 1000000): lower it, or train on "
                         "fewer than 2 processes")
    assert not list(small_movielens.glob("runs/ccf/rank-errors/rank-*")), "no rank started"
