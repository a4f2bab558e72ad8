"""The served 2TS model: an MLflow pyfunc over raw ids that adapts each user online to their recent items.

A request row is `user_id` (optional raw id), `recent_items` (raw item ids, oldest first; may be empty or absent),
`k` and optionally `exclude_clicked`. A known active user starts from their stage-1 embedding phi, anyone else
from psi; the model steps over the known recent items, then scores the whole catalogue with one matmul against
the item matrix computed once at load, and returns the top k raw item ids with their scores. Unknown item ids are
skipped and reported in `unknown_items`; a malformed request raises MlflowException(INVALID_PARAMETER_VALUE),
which the scoring server answers with HTTP 400 and the message.

`local_server` runs the real `mlflow models serve` for tests and benchmarks; `batch_recommend` runs the same
pyfunc as a Spark UDF over every user's recent history (nightly batch).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema
from pydantic import Field

from twots.config import Section, resolve
from twots.models.two_time_scale import load_model, pad_lists, save_model

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# A batch of requests is scored in chunks of at most this many (request, item) scores: 128 MiB of float32,
# so a batch job's Arrow batch over a 4M-item catalogue still fits in memory (8 requests per chunk).
SCORES_PER_CHUNK = 1 << 25
RESCORE_POOL = 256  # candidates of a bfloat16 scan rescored in float32, at least
# What the pyfunc imports (twots itself travels as code_paths), pinned to this environment's versions.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "pydantic", "PyYAML")


class ServeConfig(Section):
    """Request limits baked into a logged model, and the batch-recommend job's settings (`serve:` section)."""

    max_k: int = Field(1000, ge=1, description="largest k a request may ask for")
    max_history: int = Field(500, ge=0, description="most recent_items a request may send")
    exclude_clicked: bool = Field(True, description="default for requests that do not say: drop recent_items "
                                                    "from the top k")
    scan: Literal["float32", "bfloat16"] = Field(
        "float32", description="item matrix of the full-catalogue scan: bfloat16 halves its memory and time, and its "
        "best max(256, 4k) candidates are rescored exactly in float32")
    model_uri: str = Field("models:/twots@champion", description="recommend: the model to run")
    tracking_uri: str | None = Field(None, description="recommend: MLflow tracking URI "
                                                       "(default sqlite:///<data>/mlflow.db)")
    registry_uri: str | None = Field(None, description="recommend: MLflow registry URI (default: the tracking URI)")
    data: str | None = Field(None, description="recommend: folder of the prepared Delta tables")
    output: str | None = Field(None, description="recommend: Delta table written with the top k of each user")
    users: list[str] = Field([], description="recommend: raw user ids to score (empty: all users)")
    k: int = Field(10, ge=1, description="recommend: items per user")
    batch_size: int = Field(512, ge=1, description="recommend: users per Arrow batch handed to the model")


class RecommendConfig(ServeConfig):
    """The batch-recommend job: like `serve:`, with the tables to read and the table to write required."""

    data: str = Field(description="folder of the prepared Delta tables")
    output: str = Field(description="Delta table written with the top k of each user")


SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec(DataType.string, "user_id", required=False),
        ColSpec(Array(DataType.string), "recent_items", required=False),
        ColSpec(DataType.long, "k"),
        ColSpec(DataType.boolean, "exclude_clicked", required=False),
    ]),
    outputs=Schema([
        ColSpec(DataType.string, "user_id", required=False),
        ColSpec(DataType.string, "start"),
        ColSpec(Array(DataType.string), "items"),
        ColSpec(Array(DataType.double), "scores"),
        ColSpec(Array(DataType.string), "unknown_items"),
    ]),
)

RESULT_TYPE = ("user_id string, start string, items array<string>, scores array<double>, "
               "unknown_items array<string>")


def _bad_request(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def _column(frame: pd.DataFrame, name: str, default) -> list:
    if name not in frame.columns:
        return [default] * len(frame)
    return [default if _missing(v) else v for v in frame[name].tolist()]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _as_history(row: int, value) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        values = list(value)
        if all(isinstance(v, str) for v in values):
            return values
    raise _bad_request(f"row {row}: recent_items must be a list of item id strings, got {value!r}")


class TwoTimeScalePyfunc(mlflow.pyfunc.PythonModel):
    """Artifacts: `model` (twots.models.two_time_scale.save_model file), `users` and `items` (raw-id maps as Parquet)."""

    def load_context(self, context):
        self.model = load_model(context.artifacts["model"]).eval()
        users = pd.read_parquet(context.artifacts["users"])
        items = pd.read_parquet(context.artifacts["items"])
        self.user_index = pd.Index(users["raw_user_id"])
        self.user_active = users["is_active"].to_numpy(dtype=bool)
        self.item_index = pd.Index(items["raw_item_id"])
        self.raw_items = items["raw_item_id"].to_numpy(dtype=object)
        self.limits = ServeConfig(**(context.model_config or {}))
        with torch.no_grad():
            self.item_matrix = self.model.item_vectors(torch.arange(self.model.hparams["n_items"])).to(
                getattr(torch, self.limits.scan)).contiguous()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        requests = list(zip(*self._parse(model_input)))
        rows = max(1, SCORES_PER_CHUNK // len(self.raw_items))
        with torch.no_grad():
            return pd.concat([self._recommend(*zip(*requests[start:start + rows]))
                              for start in range(0, len(requests), rows)], ignore_index=True)

    def _parse(self, frame: pd.DataFrame):
        if len(frame) == 0:
            raise _bad_request("the request holds no rows")
        max_k = min(self.limits.max_k, len(self.raw_items))
        users = _column(frame, "user_id", None)
        ks = _column(frame, "k", None)
        excludes = _column(frame, "exclude_clicked", self.limits.exclude_clicked)
        histories = [_as_history(i, h) for i, h in enumerate(_column(frame, "recent_items", []))]
        for i, (user, k, history) in enumerate(zip(users, ks, histories)):
            if user is not None and not isinstance(user, str):
                raise _bad_request(f"row {i}: user_id must be a string or absent, got {user!r}")
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= max_k:
                raise _bad_request(f"row {i}: k must be an integer in [1, {max_k}], got {k!r}")
            if len(history) > self.limits.max_history:
                raise _bad_request(f"row {i}: recent_items holds {len(history)} ids, more than the limit "
                                   f"max_history={self.limits.max_history}")
        return users, [int(k) for k in ks], [bool(e) for e in excludes], histories

    def _top(self, state, scores, k: int):
        """The k best (scores, ids) per row; a bfloat16 scan's best candidates are rescored in float32 first."""
        if scores.dtype == torch.float32:
            return scores.topk(k, dim=1)
        pool = min(scores.shape[1], max(RESCORE_POOL, 4 * k))
        rough, candidates = scores.topk(pool, dim=1)
        exact = self.model.score(state, candidates)
        top_scores, at = exact.masked_fill(torch.isneginf(rough), float("-inf")).topk(k, dim=1)
        return top_scores, candidates.gather(1, at)

    def _recommend(self, users, ks, excludes, histories) -> pd.DataFrame:
        n = len(users)
        user_ids = self.user_index.get_indexer([u if u is not None else "" for u in users])
        known = np.array([u is not None for u in users]) & (user_ids >= 0)
        active = known & self.user_active[np.where(known, user_ids, 0)]
        active_t = torch.from_numpy(active)
        state = self.model.init_state(torch.from_numpy(np.where(active, user_ids, 0)), active_t)

        flat = self.item_index.get_indexer([i for h in histories for i in h])
        offsets = np.cumsum([0] + [len(h) for h in histories])
        unknown, clicked = [], []
        for row in range(n):
            ids = flat[offsets[row]:offsets[row + 1]]
            unknown.append([histories[row][j] for j in np.flatnonzero(ids < 0)])
            clicked.append(ids[ids >= 0])
        steps = torch.from_numpy(pad_lists(clicked))
        for t in range(steps.shape[1]):  # item -1 (a shorter history) leaves that row's state as it is
            state = self.model.step(state, steps[:, t], active_t)

        scores = self.model.user_vector(state).to(self.item_matrix.dtype) @ self.item_matrix.T
        for row in range(n):
            if excludes[row] and len(clicked[row]):
                scores[row, torch.from_numpy(clicked[row])] = float("-inf")
        top_scores, top_ids = self._top(state, scores, max(ks))
        out_items, out_scores = [], []
        for row in range(n):
            s, i = top_scores[row, :ks[row]].numpy(), top_ids[row, :ks[row]].numpy()
            finite = np.isfinite(s)
            out_items.append(self.raw_items[i[finite]].tolist())
            out_scores.append(s[finite].astype(float).tolist())
        return pd.DataFrame({
            "user_id": users,
            "start": np.where(active, "phi", "psi"),
            "items": out_items,
            "scores": out_scores,
            "unknown_items": unknown,
        })


def read_id_maps(spark, data_dir: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """users (user_id, raw_user_id, is_active) and items (item_id, raw_item_id), dense ids in order."""
    from twots.data.delta import read_table

    read = lambda table: read_table(spark, f"{data_dir}/{table}")  # noqa: E731
    users = (read("users").join(read("user_activity").select("user_id", "is_active"), "user_id", "left")
             .select("user_id", "raw_user_id", "is_active").toPandas().sort_values("user_id", ignore_index=True))
    items = read("items").select("item_id", "raw_item_id").toPandas().sort_values("item_id", ignore_index=True)
    for name, frame, key in (("users", users, "user_id"), ("items", items, "item_id")):
        if not np.array_equal(frame[key].to_numpy(), np.arange(len(frame))):
            raise ValueError(f"{data_dir}/{name}: {key} must be dense 0..{len(frame) - 1}")
    if users["is_active"].isna().any():
        missing = users.loc[users["is_active"].isna(), "raw_user_id"].head(5).tolist()
        raise ValueError(f"{data_dir}/user_activity lacks users of the users table, e.g. {missing}")
    users["is_active"] = users["is_active"].astype(bool)
    return users, items


def id_maps_fingerprint(users: pd.DataFrame, items: pd.DataFrame) -> str:
    """Equal for two models exactly when their dense ids mean the same raw users and items."""
    digest = hashlib.sha256()
    for frame, column in ((users, "raw_user_id"), (items, "raw_item_id")):
        digest.update(f"{column}:{len(frame)}".encode())
        digest.update(pd.util.hash_pandas_object(frame[column], index=False).to_numpy().tobytes())
    return digest.hexdigest()


def log_model(model: torch.nn.Module, data_dir: str, *, spark=None, name: str = "model",
              registered_model_name: str | None = None, limits: ServeConfig | None = None):
    """Log `model` as the served pyfunc (inside the active MLflow run) and return mlflow's ModelInfo.

    The raw-id maps come from `data_dir`'s `users`, `user_activity` and `items` Delta tables; `limits` defaults to
    the `serve:` section of conf/default.yaml.
    """
    if spark is None:
        from twots.spark import get_spark
        spark = get_spark()
    limits = limits or resolve(ServeConfig, "serve", {})
    users, items = read_id_maps(spark, data_dir)
    for key, frame in (("n_users", users), ("n_items", items)):
        if model.hparams[key] != len(frame):
            raise ValueError(f"the model has {key}={model.hparams[key]} but {data_dir} holds {len(frame)}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"model": f"{tmp}/model.pt", "users": f"{tmp}/users.parquet", "items": f"{tmp}/items.parquet"}
        save_model(paths["model"], model)
        users.to_parquet(paths["users"], index=False)
        items.to_parquet(paths["items"], index=False)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=TwoTimeScalePyfunc(),
            artifacts=paths,
            code_paths=[str(PACKAGE_DIR)],
            signature=SIGNATURE,
            model_config=limits.model_dump(include={"max_k", "max_history", "exclude_clicked", "scan"}),
            registered_model_name=registered_model_name,
            metadata={"data": str(data_dir), "n_users": len(users), "n_items": len(items),
                      "id_maps": id_maps_fingerprint(users, items)},
            pip_requirements=[f"{package}=={version(package)}" for package in REQUIREMENTS],
        )


def recent_histories(interactions, users, items, max_history: int):
    """One request per user: raw user_id and their last `max_history` clicked raw item ids (any split), oldest first.

    DataFrames in (the interactions, users and items tables), DataFrame out (user_id, recent_items).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy("user_id").orderBy(F.col("event_id").desc())
    last = (interactions.select("user_id", "item_id", "event_id")
            .withColumn("recency", F.row_number().over(latest))
            .where(F.col("recency") <= max_history)
            .join(items.select("item_id", "raw_item_id"), "item_id"))
    histories = last.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("event_id", "raw_item_id"))).alias("clicks"))
    return (users.join(histories, "user_id", "left")
            .select(F.col("raw_user_id").alias("user_id"),
                    F.coalesce(F.transform("clicks", lambda click: click["raw_item_id"]),
                               F.array().cast("array<string>")).alias("recent_items")))


def batch_recommend(spark, cfg: RecommendConfig) -> tuple[int, int]:
    """Top k of every user (or of cfg.users) with the model at cfg.model_uri, written to the Delta table cfg.output.

    Returns the (table version, rows) written. Requested users unknown to the tables are scored too (from psi,
    with no history) and counted in the log.
    """
    from pyspark.sql import functions as F

    from twots.data.delta import read_table, write_table

    read = lambda table: read_table(spark, f"{cfg.data}/{table}")  # noqa: E731
    # The model's own request limits (MLmodel's python_function "config"), so no history exceeds its max_history.
    limits = mlflow.models.get_model_info(cfg.model_uri).flavors["python_function"].get("config") or {}
    max_history = limits.get("max_history", cfg.max_history)
    requests = recent_histories(read("interactions"), read("users"), read("items"), max_history)
    if cfg.users:
        wanted = spark.createDataFrame([(u,) for u in dict.fromkeys(cfg.users)], "user_id string")
        requests = wanted.join(requests, "user_id", "left").select(
            "user_id", F.coalesce("recent_items", F.array().cast("array<string>")).alias("recent_items"))
        unknown = len(set(cfg.users)) - requests.join(read("users").select(F.col("raw_user_id").alias("user_id")),
                                                      "user_id").count()
        print(f"[recommend] {len(set(cfg.users))} users requested, {unknown} unknown (scored from psi)", flush=True)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.batch_size))
    predict = mlflow.pyfunc.spark_udf(spark, cfg.model_uri, result_type=RESULT_TYPE, env_manager="local")
    scored = (requests.withColumn("k", F.lit(cfg.k).cast("long"))
              .select(predict(F.struct("user_id", "recent_items", "k")).alias("top")).select("top.*"))
    version, rows = write_table(scored, cfg.output)
    print(f"[recommend] wrote {rows} users' top {cfg.k} to {cfg.output} (Delta version {version})", flush=True)
    return version, rows


@contextmanager
def local_server(model_uri: str, *, tracking_uri: str, workers: int = 1, timeout_s: float = 180):
    """Run `mlflow models serve -m model_uri --env-manager local` on 127.0.0.1 and a free port until the block
    ends; yields the base URL once /ping answers. Fails with the server's output if it exits or never answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The server execs `uvicorn` by name: this interpreter's bin folder must be on PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while not _answers(f"{url}/ping"):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                state = f"exited with {process.returncode}" if process.poll() is not None else \
                    f"did not answer /ping within {timeout_s:.0f} s"
                raise RuntimeError(f"mlflow models serve {state}:\n{log.read()[-5000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
