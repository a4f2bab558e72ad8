"""Runs tests/cluster (TorchDistributor with its ranks on the executors of a local Spark cluster) in its own pytest
process: its session is a `local-cluster` master, and one process holds one SparkSession (this one's is local[2])."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import CLUSTER_LANE, REPO


@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
@pytest.mark.timeout(3600)  # four tests, each under its own limit: a bound on a hang, not an expected time
def test_cluster_lane():
    env = {**os.environ, CLUSTER_LANE: "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cluster"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=3500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"tests/cluster failed:\n{output[-8000:]}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) == 4, output[-2000:]
