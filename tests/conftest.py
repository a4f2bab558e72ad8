"""Shared fixtures: one real local Spark session with real Delta for the whole test run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# TorchDistributor workers and Spark's python workers must import the package from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

# tests/cluster has its own Spark session (a local cluster), which cannot share a process with this one:
# tests/test_cluster_lane.py runs it as a separate pytest process with this variable set.
CLUSTER_LANE = "TWOTS_CLUSTER_LANE"
collect_ignore = [] if os.environ.get(CLUSTER_LANE) else ["cluster"]


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests use tiny tensors: on a 2-core box extra OpenMP threads only spin against Spark and the other ranks."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The test JVMs live for minutes on tiny data, two or more at once on 2 cores: without C2's compiler threads and
# the parallel GC's threads they leave the cores to the work (two prepares of 37k ratings side by side: 130 s with
# the JVM's defaults, 72 s with these). Not the jobs' default: a long job gains from C2.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@pytest.fixture(scope="session")
def spark_conf(tmp_path_factory) -> dict[str, str]:
    """Settings of every test session: few partitions, no UI, a warehouse in pytest's temp folder, quick JVMs."""
    return {
        "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("spark-warehouse")),
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "4",
        "spark.ui.enabled": "false",
        "spark.driver.extraJavaOptions": TEST_JVM_OPTIONS,
        "spark.executor.extraJavaOptions": TEST_JVM_OPTIONS,
        # Tiny tables, hundreds of distinct queries: compiling each plan's generated Java costs more than running it
        # interpreted (test_pipeline, test_prepare_content and test_profile: 259 s -> 211 s; test_generate and
        # test_negatives_popularity, larger data: 156 s either way; one run each, alone).
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    }


@pytest.fixture(scope="session")
def spark(spark_conf):
    from twots.spark import get_spark

    session = get_spark("twots-tests", master="local[2]", conf={**spark_conf, "spark.driver.memory": "2g"})
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"shared data not found at {SHARED_DATA}: tests need the checkout beside ../shared")
    return SHARED_DATA


SMALL_USERS = 250


def prepared_once(request, tmp_path_factory, name: str, build) -> Path:
    """A folder that `build(folder)` fills, built once per test run and copied for each caller (tests write MLflow
    stores and runs into prepared folders). Under pytest-xdist the first worker to get here builds it (a file lock
    in the run's temp folder, which the workers share) while the other waits: a prepare costs a minute of a 2-core
    box the other worker needs."""
    import fcntl
    import shutil

    root = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):
        root = root.parent  # the run's folder, above every worker's
    shared = root / "prepared-once" / name
    shared.mkdir(parents=True, exist_ok=True)
    with (shared.parent / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / ".built").exists():
            shutil.rmtree(shared)
            shared.mkdir()
            build(shared)
            (shared / ".built").touch()
    mine = tmp_path_factory.mktemp(name)
    shutil.copytree(shared, mine, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built"))
    return mine


@pytest.fixture(scope="session")
def small_movielens(request, spark, shared_data, tmp_path_factory) -> Path:
    """The first 250 users of ml-latest-small (37,447 of its 100,836 ratings; all of movies.csv) under `raw/`,
    prepared with t*=20, K=10, p=10, 99 eval negatives, seed 7 under `prepared/`; returns the prepared folder (Delta
    tables and manifest.json, see docs/design.md). Every test that reads prepared MovieLens tables uses it: the other
    360 users only add minutes (the demo prepares all of them). Prepared once per run (`prepared_once`)."""
    build = lambda folder: _prepare_small_movielens(spark, shared_data, folder)  # noqa: E731
    return prepared_once(request, tmp_path_factory, "small_movielens", build) / "prepared"


def _prepare_small_movielens(spark, shared_data: Path, folder: Path) -> None:
    from pipelines import PrepareConfig, prepare

    source = shared_data / "ml-latest-small"
    (folder / "raw").mkdir()
    with (source / "ratings.csv").open() as full, (folder / "raw" / "ratings.csv").open("w") as small:
        small.write(next(full))
        small.writelines(line for line in full if int(line.split(",", 1)[0]) <= SMALL_USERS)
    (folder / "raw" / "movies.csv").write_bytes((source / "movies.csv").read_bytes())
    prepare(PrepareConfig(source="movielens", input=str(folder / "raw"), output=str(folder / "prepared"),
                          t_star=20, last_k=10, negatives=10, eval_negatives=99, seed=7), spark)


def pytest_collection_modifyitems(items):
    """Every test that needs the Spark session (directly or through a fixture) is in the `spark` lane.

    `make test` runs two pytest-xdist workers, a file at a time (--dist loadfile --no-loadscope-reorder): the files
    that hold a `slow` test go first, so that the last minutes are not one long file on one worker while the other
    waits."""
    for item in items:
        if "spark" in item.fixturenames:
            item.add_marker(pytest.mark.spark)
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: file order kept within each group


def load_bench(name: str):
    """bench/<name>.py as a module (the bench scripts are not a package), registered in sys.modules, where
    dataclasses look their module up."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_job_here(monkeypatch, job: str, *argv: str) -> None:
    """jobs/<job>.py with `argv`, run in this process as `python jobs/<job>.py ...` would run it (its get_spark finds
    the test session); the README's chain runs every job as a process of its own."""
    import runpy

    monkeypatch.setattr(sys, "argv", [f"jobs/{job}.py", *argv])
    runpy.run_path(str(REPO / "jobs" / f"{job}.py"), run_name="__main__")


def stop_process_group(process) -> None:
    """SIGTERM a subprocess started in its own session (start_new_session=True) and its children; SIGKILL after 30 s."""
    import signal
    import subprocess

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
