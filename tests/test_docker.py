"""What can be checked of docker/Dockerfile without a Docker engine: its inputs exist, its command parses."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

from mlflow.models.cli import commands as mlflow_models

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def ignored(path: str) -> bool:
    """docker/Dockerfile.dockerignore semantics: a pattern matches a path or one of its parent folders, the last
    matching pattern wins and '!' re-includes."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for pattern in (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines():
        if not pattern.strip() or pattern.startswith("#"):
            continue
        glob = pattern.strip().lstrip("!").rstrip("/").replace("**/", "*")
        if any(fnmatch.fnmatch(prefix, glob) for prefix in prefixes):
            verdict = not pattern.startswith("!")
    return verdict


def test_every_copied_path_exists_and_is_in_the_build_context():
    copies = [shlex.split(args)[:-1] for op, args in instructions() if op == "COPY"]
    sources = [source for sources in copies for source in sources]
    assert {"pyproject.toml", "twots", "pipelines", "experiments", "conf", "jobs"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert not ignored(source), f"{source} is excluded by Dockerfile.dockerignore"
    assert ignored(".venv") and ignored("demo-output/mlflow.db") and ignored("twots/__pycache__/x.pyc")


def test_base_image_java_and_python_match_the_project():
    ops = instructions()
    base = next(args for op, args in ops if op == "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base  # pinned to a patch release
    assert ">=3.11,<3.12" == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    runs = " ".join(args for op, args in ops if op == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert "pip install -e ." in runs  # the pins of pyproject.toml
    defaults = re.search(r"--spark-defaults (\S+)", runs).group(1)
    assert defaults == "/databricks/python3/lib/python3.11/site-packages/pyspark/conf/spark-defaults.conf"
    env = " ".join(args for op, args in ops if op == "ENV")
    assert "PYSPARK_PYTHON=/databricks/python3/bin/python3" in env


def test_command_is_a_valid_mlflow_models_serve_invocation():
    command = json.loads(next(args for op, args in instructions() if op == "CMD"))
    assert command[:3] == ["mlflow", "models", "serve"]
    context = mlflow_models.commands["serve"].make_context("serve", command[3:])  # raises on a bad option
    assert context.params["model_uri"] == "models:/twots@champion"
    assert context.params["env_manager"] == "local" and context.params["host"] == "0.0.0.0"
    assert str(context.params["port"]) == "8080"
    expose = [args for op, args in instructions() if op == "EXPOSE"]
    assert expose == [str(context.params["port"])]
