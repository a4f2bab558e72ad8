"""docker/Dockerfile: its inputs, base and command checked as text, and the built image (`make image`) run with
buildah serving the demo's champion, its answers compared with the same model loaded here."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import stop_process_group
from mlflow.models.cli import commands as mlflow_models

from twots.mlops.server import _answers

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"
IMAGE = os.environ.get("TWOTS_IMAGE", "localhost/twots:latest")
DEMO = Path(os.environ.get("TWOTS_DEMO_OUTPUT", REPO / "demo-output"))  # what `make demo` writes


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


def test_the_build_context_holds_the_package_and_no_local_state():
    copies = [shlex.split(args)[:-1] for op, args in instructions() if op == "COPY"]
    assert copies == [["pyproject.toml"], ["."]]  # dependencies first, then the whole (filtered) context
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    context = {path.split("/")[0] for path in tracked.split() if not ignored(path)}
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {"pyproject.toml", "README.md", "conf", "jobs"} <= context
    assert {pattern.rstrip("*") for pattern in packages["include"]} <= context
    assert not context & {"tests", "docker", "docs", "bench", "Makefile"}
    for path in [".venv/bin/python", "demo-output/mlflow.db", "twots/__pycache__/x.pyc", "spark-warehouse/t"]:
        assert ignored(path), path


def test_base_image_java_and_python_match_the_project():
    ops = instructions()
    assert next(args for op, args in ops if op == "FROM") == "${BASE_IMAGE}"
    base = next(args for op, args in ops if op == "ARG" and args.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=python:3\.11\.\d+-slim-bookworm", base), base  # pinned to a patch release
    # The local base (`make image`) is the same Debian release with its own python3.11.
    debootstrap = re.search(r"^debootstrap .*$", (REPO / "docker" / "base.sh").read_text(), re.MULTILINE).group(0)
    assert " bookworm " in debootstrap and "python3.11," in debootstrap and "python3.11-venv" in debootstrap
    assert ">=3.11,<3.12" == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    runs = " ".join(args for op, args in ops if op == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert "['project']['dependencies']" in runs and "pip install -r /tmp/requirements.txt" in runs  # its pins
    assert "pip install --no-deps --no-build-isolation -e ." in runs
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


def image_skip_reason() -> str | None:
    if shutil.which("buildah") is None:
        return "buildah is not installed (apt-get install buildah): the image cannot be run here"
    if os.geteuid() != 0:
        return "running the image with buildah's chroot isolation needs root"
    if subprocess.run(["buildah", "inspect", "--type", "image", IMAGE], capture_output=True,
                      check=False).returncode != 0:
        return f"image {IMAGE} is not built: run `make image`"
    if not (DEMO / "mlflow.db").exists():
        return f"no demo registry at {DEMO}/mlflow.db: run `make demo` (or set TWOTS_DEMO_OUTPUT)"
    return None


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture
def image_server():
    """The image's own command (its CMD) run in a buildah container on 127.0.0.1 and a free port (chroot isolation
    shares the host's network), with the demo output mounted at the same path (its registry holds absolute
    artifact paths; serving a local model writes a `registered_model_meta` file beside it, as it does outside).
    Yields the base URL once /ping answers; the container is removed afterwards."""
    reason = image_skip_reason()
    if reason:
        pytest.skip(reason)
    config = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", IMAGE], capture_output=True,
                                       text=True, check=True).stdout)["OCIv1"]["config"]
    command = list(config["Cmd"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command[command.index("-h") + 1], command[command.index("-p") + 1] = "127.0.0.1", str(port)
    container = subprocess.run(["buildah", "from", "--pull=never", IMAGE], capture_output=True, text=True,
                               check=True).stdout.strip()
    process = None
    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            process = subprocess.Popen(
                ["buildah", "run", "--isolation", "chroot", "--volume", f"{DEMO}:{DEMO}",
                 "--env", f"MLFLOW_TRACKING_URI=sqlite:///{DEMO}/mlflow.db", container, "--", *command],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
            while not _answers(f"{url}/ping"):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"{' '.join(command)} in {IMAGE} did not answer /ping:\n{log.read()[-5000:]}")
                time.sleep(1)
            yield url
        finally:
            if process is not None:
                stop_process_group(process)
            subprocess.run(["buildah", "rm", container], capture_output=True, check=True)


@pytest.mark.slow
def test_image_serves_the_demo_champion(image_server, monkeypatch):
    """A new user's top 5, then a user whose recent items are those 5: the image's answers are the ones the same
    model gives loaded here (items exactly, scores to float32 rounding), and the history changes the answer."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{DEMO}/mlflow.db")
    local = mlflow.pyfunc.load_model("models:/twots@champion")
    cold = {"recent_items": [], "k": 5}
    first = post(f"{image_server}/invocations", {"dataframe_records": [cold]})["predictions"][0]
    assert first["start"] == "psi" and len(first["items"]) == 5 and first["unknown_items"] == []
    warm = {"user_id": "no-such-user", "recent_items": first["items"] + ["no-such-item"], "k": 10}
    second = post(f"{image_server}/invocations", {"dataframe_records": [warm]})["predictions"][0]
    assert second["unknown_items"] == ["no-such-item"] and len(second["items"]) == 10
    assert not set(second["items"]) & set(first["items"])  # exclude_clicked by default: history adapts the answer
    for served, request in [(first, cold), (second, warm)]:
        expected = local.predict(pd.DataFrame([request])).iloc[0]
        assert served["items"] == list(expected["items"])
        assert served["scores"] == pytest.approx(list(expected["scores"]), rel=1e-5, abs=1e-6)
        assert served["scores"] == sorted(served["scores"], reverse=True)
