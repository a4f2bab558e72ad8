"""Packaging the served model: the raw-id maps, the faiss index, the pyfunc's code (only the modules it imports), the
pinned requirements, the signature and an input example, logged to the active MLflow run by `log_model`."""

from __future__ import annotations

import ast
import hashlib
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import faiss
import mlflow
import numpy as np
import pandas as pd
import torch

from twots.config import resolve
from twots.data.delta import read_table
from twots.data.tables import ITEMS, USER_ACTIVITY, USERS
from twots.mlops.index import SHIPPED, build_index, chosen_kind
from twots.mlops.pyfunc import SIGNATURE, RecommenderPyfunc, ServeConfig
from twots.models.kinds import KINDS, save_model
from twots.spark import get_spark

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SERVED_MODULE = "twots.mlops.pyfunc"
# What the pyfunc imports besides twots, pinned to this environment's versions.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "pydantic", "PyYAML", "faiss-cpu")
# The `serve:` settings a logged model carries in its config (the rest are the batch job's or build-time ones).
SERVED_SETTINGS = {"max_k", "max_history", "exclude_clicked", "index", "ivf_nprobe", "hnsw_ef_search", "rescore_pool",
                   "scan"}


def twots_imports(module: str) -> list[str]:
    """`module` and every twots module it imports, directly or not, found by reading the sources (packages'
    __init__ included): the code a logged model needs."""
    found, todo = set(), [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            package = ".".join(parts[:i])
            if package in found:
                continue
            path = PACKAGE_DIR.parent.joinpath(*parts[:i])
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            if not path.exists():
                break  # a name imported from a module, not a module
            found.add(package)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("twots"):
                    todo += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                elif isinstance(node, ast.Import):
                    todo += [alias.name for alias in node.names if alias.name.startswith("twots")]
    return sorted(found)


def served_code(target: Path) -> Path:
    """A copy of the twots package under `target` holding only the modules the pyfunc imports."""
    root = target / "twots"
    for module in twots_imports(SERVED_MODULE):
        source = PACKAGE_DIR.parent.joinpath(*module.split("."))
        source = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
        destination = target / source.relative_to(PACKAGE_DIR.parent)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return root


def read_id_maps(spark, data_dir: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """users (user_id, raw_user_id, is_active) and items (item_id, raw_item_id), dense ids in order."""
    read = lambda table: read_table(spark, f"{data_dir}/{table}")  # noqa: E731
    users = (read(USERS).join(read(USER_ACTIVITY).select("user_id", "is_active"), "user_id", "left")
             .select("user_id", "raw_user_id", "is_active").toPandas().sort_values("user_id", ignore_index=True))
    items = read(ITEMS).select("item_id", "raw_item_id").toPandas().sort_values("item_id", ignore_index=True)
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


def log_model(model: torch.nn.Module, data_dir: str, *, kind: str, spark=None, name: str = "model",
              registered_model_name: str | None = None, limits: ServeConfig | None = None):
    """Log `model`, of model kind `kind` (a name of twots.models.kinds.KINDS), as the served pyfunc (inside the
    active MLflow run) and return mlflow's ModelInfo. The kind is recorded in the model's metadata (and the run's
    `model_kind` tag), where the registry reads it.

    The raw-id maps come from `data_dir`'s `users`, `user_activity` and `items` Delta tables; `limits` defaults to
    the `serve:` section of conf/default.yaml.
    """
    if spark is None:
        spark = get_spark()
    users, items = read_id_maps(spark, data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        served = served_model(model, users, items, Path(tmp), kind=kind, data=str(data_dir), limits=limits)
        mlflow.set_tag("model_kind", kind)
        # A request as a client sends it: MLflow keeps it with the model and, once logged, checks that it serves.
        example = pd.DataFrame({"user_id": users["raw_user_id"].head(1), "k": [min(10, len(items))],
                                "recent_items": [items["raw_item_id"].head(2).tolist()]})
        return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model_name, input_example=example,
                                       **served)


def served_model(model: torch.nn.Module, users: pd.DataFrame, items: pd.DataFrame, folder: Path, *, kind: str,
                 data: str, limits: ServeConfig | None = None) -> dict:
    """The keyword arguments of `mlflow.pyfunc.log_model` / `save_model` for `model` of kind `kind` with the id maps
    of read_id_maps (from the tables in `data`): its artifacts written under `folder` (the faiss index built here
    when `limits.index` chooses a shipped kind), code, signature, config and metadata (the index's kind and build
    seconds) and pinned requirements."""
    if kind not in KINDS or not isinstance(model, KINDS[kind].model_class):
        expected = f"a {KINDS[kind].model_class.__name__}" if kind in KINDS else f"one of {list(KINDS)}"
        raise ValueError(f"log_model: kind {kind!r} needs {expected}, got a {type(model).__name__}")
    limits = limits or resolve(ServeConfig, "serve", {})
    for key, frame in (("n_users", users), ("n_items", items)):
        if key in model.hparams and model.hparams[key] != len(frame):  # the baselines have no user table
            raise ValueError(f"the model has {key}={model.hparams[key]} but {data} holds {len(frame)}")
    index = chosen_kind(limits.index, len(items), limits.index_flat_below)
    paths = {"model": f"{folder}/model.pt", "users": f"{folder}/users.parquet", "items": f"{folder}/items.parquet"}
    save_model(paths["model"], model)
    users.to_parquet(paths["users"], index=False)
    items.to_parquet(paths["items"], index=False)
    metadata = {"kind": kind, "data": data, "n_users": len(users), "n_items": len(items),
                "id_maps": id_maps_fingerprint(users, items), "index": index}
    if index in SHIPPED:
        started = time.perf_counter()
        with torch.no_grad():
            vectors = model.item_vectors(torch.arange(len(items))).float().cpu().numpy()
        built = build_index(vectors, index, hnsw_m=limits.hnsw_m, hnsw_ef_construction=limits.hnsw_ef_construction)
        paths["index"] = f"{folder}/index.faiss"
        faiss.write_index(built, paths["index"])
        metadata["index_build_s"] = round(time.perf_counter() - started, 1)
    return dict(
        python_model=RecommenderPyfunc(),
        artifacts=paths,
        code_paths=[str(served_code(folder / "code"))],
        signature=SIGNATURE,
        model_config={**limits.model_dump(include=SERVED_SETTINGS), "index": index},
        metadata=metadata,
        pip_requirements=[f"{package}=={version(package)}" for package in REQUIREMENTS],
    )
