"""The Databricks Asset Bundle against the code: files, flags, task order, cron and databricks-sdk job models."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml
from databricks.sdk.service.jobs import JobSettings

from twots.config import parser_for, resolve

REPO = Path(__file__).resolve().parent.parent
FILE_PATH = "/Workspace/Users/someone@example.com/.bundle/twots/{target}/files"
# What the task values look like at run time: an MLflow run id and a model version.
TASK_VALUES = {"run_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "model_version": "3"}


def bundle_jobs(target: str) -> dict[str, tuple[dict, Path]]:
    """Every job of the bundle with ${...} references resolved for `target`, and the file that defines it."""
    root = yaml.safe_load((REPO / "databricks.yml").read_text())
    assert target in root["targets"]
    variables = {name: spec["default"] for name, spec in root["variables"].items()}
    variables.update(root["targets"][target].get("variables", {}))
    known = {"bundle.target": target, "workspace.file_path": FILE_PATH.format(target=target),
             **{f"var.{name}": str(value) for name, value in variables.items()}}

    def substitute(value):
        if isinstance(value, dict):
            return {k: substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [substitute(v) for v in value]
        if not isinstance(value, str):
            return value
        for _ in range(5):  # variables may refer to variables
            value = re.sub(r"\$\{([^}]+)\}", lambda m: known[m.group(1)], value)
        return value

    jobs = {}
    for pattern in root["include"]:
        for path in sorted(REPO.glob(pattern)):
            for name, job in yaml.safe_load(path.read_text())["resources"]["jobs"].items():
                jobs[name] = (substitute(job), path)
    return jobs


def job_config(script: Path):
    """The (config model, section) that a jobs/*.py file passes to twots.config.load."""
    tree = ast.parse(script.read_text())
    imports = {alias.asname or alias.name: node.module for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load":
            model_name, section = node.args[0].id, node.args[1].value
            return getattr(importlib.import_module(imports[model_name]), model_name), section
    raise AssertionError(f"{script} does not call twots.config.load(Model, section)")


FIELD = r"(\*|\?|L|LW|[0-9A-Z]+(-[0-9A-Z]+)?(/[0-9]+)?|\*/[0-9]+|[0-9]+W|[0-9A-Z]+L|[0-9]#[1-5])"
RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (1, 7), (1970, 2199)]
NAMES = {4: "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 5: "SUN MON TUE WED THU FRI SAT".split()}


def quartz_cron_errors(expression: str) -> list[str]:
    """Why a Quartz cron expression (sec min hour day-of-month month day-of-week [year]) is invalid; [] if valid."""
    fields = expression.split()
    if len(fields) not in (6, 7):
        return [f"{len(fields)} fields, Quartz needs 6 or 7"]
    errors = []
    for index, field in enumerate(fields):
        for part in field.split(","):
            if not re.fullmatch(FIELD, part):
                errors.append(f"field {index + 1}: {part!r} is not a Quartz term")
                continue
            if "?" in part and index not in (3, 5):
                errors.append(f"field {index + 1}: '?' only in day-of-month or day-of-week")
            low, high = RANGES[index]
            for token in re.findall(r"[0-9A-Z]+", part.split("/")[0].split("#")[0]):
                token = token.rstrip("LW") or "1"
                number = NAMES[index].index(token) + low if token in NAMES.get(index, []) else (
                    int(token) if token.isdigit() else None)
                if number is None or not low <= number <= high:
                    errors.append(f"field {index + 1}: {token!r} is not in {low}..{high}")
    if (fields[3] == "?") == (fields[5] == "?"):
        errors.append("exactly one of day-of-month and day-of-week must be '?'")
    return errors


def test_quartz_validator_rejects_what_quartz_rejects():
    assert quartz_cron_errors("0 0 2 ? * SUN") == []
    assert quartz_cron_errors("0 30 4 * * ?") == []
    assert quartz_cron_errors("0 0/15 8-18 ? * MON-FRI 2027") == []
    assert quartz_cron_errors("0 2 * * *") != []            # unix cron: 5 fields
    assert quartz_cron_errors("0 0 2 * * SUN") != []        # neither day field is '?'
    assert quartz_cron_errors("0 0 25 ? * SUN") != []       # hour 25
    assert quartz_cron_errors("0 61 2 ? * *") != []         # minute 61
    assert quartz_cron_errors("0 0 2 ? * FUNDAY") != []


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_jobs_load_into_databricks_sdk_and_schedules_are_quartz(target):
    jobs = bundle_jobs(target)
    assert set(jobs) == {"twots_train", "twots_recommend"}
    for name, (job, _) in jobs.items():
        settings = JobSettings.from_dict(job)
        assert settings.as_dict() == job, f"{name}: keys databricks-sdk does not know were dropped"
        assert quartz_cron_errors(settings.schedule.quartz_cron_expression) == [], name
        assert settings.name == f"{target}-{name.replace('_', '-')}"


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_task_runs_an_existing_job_with_flags_its_parser_accepts(target):
    for job, path in bundle_jobs(target).values():
        keys = {task["task_key"] for task in job["tasks"]}
        clusters = {cluster["job_cluster_key"] for cluster in job["job_clusters"]}
        for task in job["tasks"]:
            assert task["job_cluster_key"] in clusters
            assert {d["task_key"] for d in task.get("depends_on", [])} <= keys
            script = (path.parent / task["spark_python_task"]["python_file"]).resolve()
            assert script.is_file() and script.parent == REPO / "jobs", script
            params = [re.sub(r"\{\{tasks\.(\w+)\.values\.(\w+)\}\}", lambda m: TASK_VALUES[m.group(2)], p)
                      for p in task["spark_python_task"]["parameters"]]
            model, section = job_config(script)
            args = parser_for(model, section).parse_args(params)  # an unknown flag exits here
            resolve(model, section, vars(args))  # and a bad value raises ConfigError naming the key


def upstream(tasks: dict, key: str) -> set[str]:
    direct = {d["task_key"] for d in tasks[key].get("depends_on", [])}
    return direct.union(*(upstream(tasks, d) for d in direct))


def test_training_job_order_gpu_training_and_task_values():
    job, _ = bundle_jobs("prod")["twots_train"]
    tasks = {task["task_key"]: task for task in job["tasks"]}
    assert upstream(tasks, "promote") == {"validate", "register", "train", "prepare"}
    assert [d["task_key"] for d in tasks["validate"]["depends_on"]] == ["register"]
    assert [d["task_key"] for d in tasks["train"]["depends_on"]] == ["prepare"]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    gpu = clusters[tasks["train"]["job_cluster_key"]]
    cpu = clusters[tasks["prepare"]["job_cluster_key"]]
    assert re.fullmatch(r"17\.\d+\.x-gpu-ml-scala2\.13", gpu["spark_version"])  # Spark 4.0 line, GPU ML runtime
    assert "gpu" not in cpu["spark_version"]
    model, section = job_config(REPO / "jobs" / "train.py")
    train = resolve(model, section, vars(parser_for(model, section).parse_args(
        tasks["train"]["spark_python_task"]["parameters"])))
    assert train.use_gpu and not train.local_mode  # TorchDistributor in cluster mode over the workers' GPUs
    # Task values only flow downstream.
    for key, task in tasks.items():
        for source in re.findall(r"\{\{tasks\.(\w+)\.values", " ".join(task["spark_python_task"]["parameters"])):
            assert source in upstream(tasks, key), (key, source)
