"""The cluster lane: one `local-cluster[2,1,1024]` Spark session (a driver and two executor JVMs, each its own
process with one core) shared by the tests of this folder, so TorchDistributor with local_mode=False runs its
ranks as barrier tasks in the executors, as on a real cluster.

A process holds one SparkSession, and the main suite's is `local[2]`: tests/test_cluster_lane.py runs this folder
in its own pytest process (TWOTS_CLUSTER_LANE=1 makes tests/conftest.py collect it). Run it alone with
    TWOTS_CLUSTER_LANE=1 .venv/bin/python -m pytest -q tests/cluster
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

EXECUTOR_MEMORY_MB = 1024


@pytest.fixture(scope="session")
def spark(spark_conf):
    from twots.spark import get_spark

    session = get_spark("twots-cluster-tests", master=f"local-cluster[2,1,{EXECUTOR_MEMORY_MB}]", conf={
        **spark_conf, "spark.driver.host": "127.0.0.1",
        "spark.pyspark.python": sys.executable,            # the executors' Python workers, hence the ranks
    })
    session.sparkContext.setLogLevel("ERROR")
    app = session.sparkContext.applicationId
    yield session
    session.stop()
    # local-cluster's workers keep each executor's logs under $SPARK_HOME/work/<app id>: inside the venv's pyspark
    import pyspark

    shutil.rmtree(Path(os.environ.get("SPARK_HOME", Path(pyspark.__file__).parent)) / "work" / app, ignore_errors=True)
