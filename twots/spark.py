"""One way to get a SparkSession with Delta, locally or on Databricks.

On Databricks (DATABRICKS_RUNTIME_VERSION is set) Delta is built in and the session exists: we add nothing.
Locally, `make setup` resolves the Delta JARs once into a folder of Spark's (`delta_jars_dir`) and writes the Delta
settings, `spark.jars` naming those files among them, into the venv's `pyspark/conf/spark-defaults.conf`, which
`spark-submit jobs/x.py` reads before the JVM starts; the driver hands the JARs to the executors, wherever they run.
The same settings are applied here too, so a plain `python jobs/x.py` works as well. Where `make setup` did not
resolve them (any other pyspark install), the JARs are `spark.jars.packages`, which Ivy resolves, and reports on,
at each start.

Spark logs at WARN: `make setup` writes LOG4J2 (the level read from $TWOTS_SPARK_LOG_LEVEL, default warn) beside
spark-defaults.conf, so the JVM is quiet from its first line, and every session gets `setLogLevel` of that
variable. A job's `--verbose` (or `spark: {log_level: INFO}` in a config file) sets it before Spark starts.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twots.config import LOG_LEVEL_ENV

DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def delta_jars_dir() -> Path:
    """Where twots.setup_env puts DELTA_PACKAGE's JARs: a folder of the Spark this process starts ($SPARK_HOME, else
    pyspark's own), one per package version."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home()) / "delta-jars" / DELTA_PACKAGE.replace(":", "_")


def delta_conf() -> dict[str, str]:
    """DELTA_CONF and the Delta JARs: the files in delta_jars_dir(), else the package for Ivy to resolve."""
    folder = delta_jars_dir()
    if folder.is_dir():
        return {**DELTA_CONF, "spark.jars": ",".join(str(jar) for jar in sorted(folder.glob("*.jar")))}
    return {**DELTA_CONF, "spark.jars.packages": DELTA_PACKAGE}


LOCAL_CONF = {
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    # Delta rebuilds each snapshot with 50 tasks by default; our tables have short logs (each run overwrites),
    # and on a 2-core box those tasks cost more than the reads (taobao-sample prepare: 120 s -> 77 s).
    "spark.databricks.delta.snapshotPartitions": "2",
}


# Spark's conf/log4j2.properties.template with the root level from the environment, and the warnings every run of
# ours prints silenced: no native Hadoop, a loopback address, "no metadata directory" (a stack trace per globbed
# input path), "no partition defined for window" (prepare's global orders are deliberate), long plan strings,
# "pool ... has not been configured" (prepare's scheduler pools are made on first use, as meant), and of the block
# manager's warnings the one that a block computed twice (prepare's concurrent steps share cached rows) is kept once.
QUIET = ("org.apache.hadoop.util.NativeCodeLoader", "org.apache.spark.util.Utils",
         "org.apache.spark.sql.execution.streaming.FileStreamSink", "org.apache.spark.sql.execution.window.WindowExec",
         "org.apache.spark.sql.catalyst.util.SparkStringUtils", "org.apache.spark.scheduler.FairSchedulableBuilder")
LOG4J2 = f"""# written by `make setup` (twots.setup_env): Spark's log at ${LOG_LEVEL_ENV} (default warn)
rootLogger.level = ${{env:{LOG_LEVEL_ENV}:-warn}}
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
logger.blocks.name = org.apache.spark.storage.BlockManager
logger.blocks.filter.twice.type = RegexFilter
logger.blocks.filter.twice.regex = Block [^ ]+ already exists on this machine; not re-adding it
logger.blocks.filter.twice.onMatch = DENY
logger.blocks.filter.twice.onMismatch = NEUTRAL
""" + "".join(f"logger.quiet{i}.name = {name}\nlogger.quiet{i}.level = error\n" for i, name in enumerate(QUIET))


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(app_name: str = "twots", master: str | None = None, conf: dict[str, str] | None = None):
    from pyspark.sql import SparkSession

    if on_databricks():
        return SparkSession.builder.getOrCreate()
    # Python workers run PYSPARK_PYTHON, by default the `python3` on PATH, which lacks this venv's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in {**delta_conf(), **LOCAL_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get(LOG_LEVEL_ENV, "WARN").upper())
    return session


@contextmanager
def progress(spark, label: str, every_s: float = 30.0, log=print, group: str | None = None) -> Iterator[None]:
    """While the block runs, every `every_s` seconds: the tasks done of the Spark stages running now, of the jobs of
    job group `group` when given (other work may run at the same time). Spark's own console progress bar is off: it
    redraws many times a second and interleaves with our lines."""
    tracker = spark.sparkContext.statusTracker()
    done_event, started = threading.Event(), time.monotonic()

    def running() -> list[int]:
        if group is None:
            return tracker.getActiveStageIds()
        jobs = [tracker.getJobInfo(job) for job in tracker.getJobIdsForGroup(group)]
        active = set(tracker.getActiveStageIds())
        return [stage for job in jobs if job for stage in job.stageIds if stage in active]

    def report() -> None:
        while not done_event.wait(every_s):
            stages = [info for info in map(tracker.getStageInfo, running()) if info]
            total = sum(info.numTasks for info in stages)
            if total:
                done = sum(info.numCompletedTasks for info in stages)
                log(f"{label}: {done}/{total} tasks of {len(stages)} running stage(s), "
                    f"{time.monotonic() - started:.0f} s so far", flush=True)

    thread = threading.Thread(target=report, name=f"progress {label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done_event.set()
        thread.join()


class OutOfMemory(RuntimeError):
    """A step ran out of memory; the message names the step, what it needed and the setting that helps."""


JVM_OOM_EXIT = 52   # Spark's exit code for a JVM killed by an OutOfMemoryError (SparkExitCode.OOM)


@contextmanager
def memory_guard(spark, step: str, needs: str = ""):
    """Re-raise an out-of-memory error inside `step` (the driver JVM's heap, an executor's, or this Python process)
    as one OutOfMemory that says which step, what it needed (`needs`, e.g. "about 600 MB of arrays") and which
    setting helps, instead of a Java stack trace under a flood of py4j errors."""
    needing = f" (it needs {needs})" if needs else ""
    # Read before the step: after an OutOfMemoryError in a local-mode task the JVM exits and cannot be asked.
    conf = spark.sparkContext.getConf()
    master = conf.get("spark.master", "")
    driver_heap = conf.get("spark.driver.memory", "1g (Spark's default)")
    executor_heap = conf.get("spark.executor.memory", "1g (Spark's default)")
    try:
        yield
    except MemoryError:
        raise OutOfMemory(f"{step}: this Python process ran out of memory{needing}; run the driver on a machine "
                          f"with more memory, or evaluate on a user sample (prepare's --eval-sample)") from None
    except Exception as err:  # py4j and pyspark wrap the JVM's OutOfMemoryError in several types
        message = _message(err)
        if "OutOfMemoryError" not in message and _jvm_exit_code(spark, err, message) != JVM_OOM_EXIT:
            raise
        if "stage failure" in message and not master.startswith("local"):
            raise OutOfMemory(f"{step}: an executor ran out of Java heap (spark.executor.memory={executor_heap})"
                              f"{needing}; raise spark.executor.memory or spread the work over more partitions "
                              f"(spark.sql.shuffle.partitions)") from None
        raise OutOfMemory(f"{step}: the driver JVM ran out of Java heap (spark.driver.memory={driver_heap}){needing}; "
                          f"start the job with a larger heap: spark-submit --driver-memory 4g, or "
                          f"spark.driver.memory in spark-defaults.conf (it is read when the JVM starts, so "
                          f"setting it in a running session does nothing)") from None


def _message(err: Exception) -> str:
    """str(err), which for a py4j error asks the JVM for its Java exception's text: once the JVM is gone, that
    raises (connection refused), so its type name stands in."""
    try:
        return str(err)
    except Exception:  # any failure to ask the dead JVM
        return type(err).__name__


def _jvm_exit_code(spark, err: Exception, message: str, wait_s: float = 10.0) -> int | None:
    """The driver JVM's exit code when `err` says it is going away (py4j lost it, or a job was cancelled because the
    context shut down: what a local-mode task's OutOfMemoryError does) and it has exited or does within `wait_s`."""
    import subprocess

    from py4j.protocol import Py4JError

    proc = getattr(spark.sparkContext._gateway, "proc", None)
    # A dying JVM shows up as any py4j error somewhere in the chain (a lost connection, or pyspark's own error
    # conversion failing to call into it), or as Spark's message for the cancelled job.
    chain = [err, err.__cause__, err.__context__]
    lost = (any(isinstance(e, (Py4JError, ConnectionError)) for e in chain)
            or "Java side" in message or "SparkContext was shut down" in message)
    if proc is None or not lost:
        return None
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return None
