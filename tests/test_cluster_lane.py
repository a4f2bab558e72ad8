"""Runs tests/cluster (TorchDistributor with its ranks on the executors of a local Spark cluster) in its own pytest
process: its session is a `local-cluster` master, and one process holds one SparkSession (this one's is local[2]).

The process starts when collection ends (tests/conftest.py, pytest_collection_finish) and runs beside the main
suite, to use what the main suite's short Spark jobs leave of the two cores; this test, ordered last, waits for it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLUSTER_LANE, CLUSTER_LANE_RUN, REPO, stop_process_group

TIMEOUT_S = 3500  # four tests, each under its own limit: a bound on a hang, not an expected time


@dataclass
class Lane:
    process: subprocess.Popen
    folder: Path  # its pytest --basetemp and output.log

    @classmethod
    def start(cls) -> Lane:
        folder = Path(tempfile.mkdtemp(prefix="twots-cluster-lane-"))
        with (folder / "output.log").open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(folder / "tmp"),
                 "tests/cluster"], cwd=REPO, env={**os.environ, CLUSTER_LANE: "1"}, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        return cls(process, folder)

    def stop(self) -> None:
        stop_process_group(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 100)
def test_cluster_lane(request):
    lane = request.config.stash[CLUSTER_LANE_RUN]
    lane.process.wait(timeout=TIMEOUT_S)
    output = (lane.folder / "output.log").read_text()
    assert lane.process.returncode == 0, f"tests/cluster failed:\n{output[-8000:]}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) == 4, output[-2000:]
