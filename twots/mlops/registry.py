"""Registry steps of the MLOps Stacks pattern, with aliases: register -> validate (@challenger) -> promote (@champion).

Every step is safe to rerun: register reuses the version of a run already registered, validate re-scores and
writes the same verdict, promote does nothing when there is no challenger. A version becomes @challenger only
when its test MRR clears an absolute floor and beats @champion's (scored on the same candidates of the same Delta
table version) by a relative margin; promote refuses a challenger validated against another champion than the
current one, so a worse model is never promoted. Versions may be of any model kind (twots.models.kinds, the
`model_kind` tag): the gate replays both through the same protocol on the same candidates, whatever their kinds.
A model trained on other users/items tables (an older champion after a retrain on refreshed data) is scored
through its own raw-id maps (twots.evaluation.remap), as it would serve.
Each step publishes its result as a Databricks task value (on Databricks) and prints it as one JSON line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import Field

from twots.cli import UserError
from twots.config import BIN_DIR, Section
from twots.data.tables import EVAL_CANDIDATES
from twots.evaluation.evaluate import SPLITS, EvalData, evaluate_loaded, load_arrays
from twots.evaluation.remap import RemappedModel
from twots.mlops.packaging import id_maps_fingerprint, read_id_maps
from twots.mlops.tracking import default_tracking_uri, logged_model_uri, table_versions, training_run
from twots.spark import on_databricks

CHAMPION, CHALLENGER = "champion", "challenger"
STATUS, REASON = "validation_status", "validation_reason"
KIND = "model_kind"


class RegistryConfig(Section):
    """Register a training run's model, validate it against @champion, promote it (`registry:` section)."""

    data: str = Field(description="folder of the prepared Delta tables (prepare's --output)")
    model_name: str = Field("twots", description="registered model name (catalog.schema.name on Unity Catalog)")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default sqlite:///<data>/mlflow.db)")
    registry_uri: str | None = Field(None, description="MLflow registry URI (default: the tracking URI)")
    run_id: str | None = Field(None, description="register: the training run whose `model` is registered")
    version: str | None = Field(None, description="validate/promote: the model version (default: validate the newest)")
    split: str = Field("test", pattern="^(val|test)$", description="evaluation split scored by validate")
    mrr_floor: float = Field(0.0, ge=0, le=1, description="validate: a version needs at least this MRR")
    min_relative_gain: float = Field(0.0, ge=0, description="validate: and MRR >= champion's * (1 + this)")


def use_registry(tracking_uri: str | None, registry_uri: str | None, data: str) -> MlflowClient:
    """Point MLflow at the tracking store (default: the local sqlite store beside the tables) and registry."""
    tracking = tracking_uri or default_tracking_uri(data)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry_uri or tracking)
    return MlflowClient()


def connect(cfg: RegistryConfig) -> MlflowClient:
    return use_registry(cfg.tracking_uri, cfg.registry_uri, cfg.data)


def publish(key: str, value) -> None:
    """Hand a value to the next task: a Databricks task value there, a JSON line on stdout everywhere."""
    if on_databricks():
        from databricks.sdk.runtime import dbutils

        dbutils.jobs.taskValues.set(key=key, value=value)
    print(json.dumps({key: value}), flush=True)


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register(client: MlflowClient, name: str, run_id: str, tags: dict[str, str] | None = None) -> str:
    """The version of `run_id`'s `model` under `name`, registering it on the first call. The version is tagged
    with the run's model kind (`model_kind`, set by twots.mlops.packaging.log_model) and `tags`."""
    kind = training_run(client, run_id).data.tags.get(KIND, "")
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    version = (str(min(int(v.version) for v in existing)) if existing
               else str(mlflow.register_model(logged_model_uri(client, run_id, "model"), name).version))
    for key, value in {KIND: kind, **(tags or {})}.items():
        client.set_model_version_tag(name, version, key, str(value))
    return version


def kind_of(client: MlflowClient, name: str, version: str) -> str:
    """The model kind a version was registered with ("" for versions registered before kinds were recorded)."""
    return client.get_model_version(name, version).tags.get(KIND, "")


def latest_version(client: MlflowClient, name: str) -> str:
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise UserError(f"no version of {name} is registered", mlflow.get_registry_uri(),
                        "register a training run first: jobs/register.py --run-id <id>")
    return str(max(int(v.version) for v in versions))


def model_info(uri: str):
    """MLflow's ModelInfo of the registered model `uri` (models:/<name>@<alias>, models:/<name>/<version>); a
    UserError when the registry has no such model, version or alias."""
    try:
        return mlflow.models.get_model_info(uri)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise UserError("no such registered model", f"{uri} in {mlflow.get_registry_uri()}",
                        "register a training run (jobs/register.py), then validate and promote it") from None


def replayed_splits(split: str) -> tuple[str, ...]:
    """`split` and the splits before it: test is replayed after val, as in training's evaluation."""
    return SPLITS[:SPLITS.index(split) + 1]


def score(name: str, version: str, data: EvalData, split: str, users: pd.DataFrame, items: pd.DataFrame,
          id_maps: str) -> tuple[float, dict[str, int] | None]:
    """The version's MRR on `split` of the replay arrays `data` (loaded for replayed_splits(split)), whose raw-id maps
    are `users` and `items` (read_id_maps) with fingerprint `id_maps`. A version trained on other maps is scored
    through its own (twots.evaluation.remap); then also returned: how many of the replayed users and candidate items
    it does not know, else None."""
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    served = pyfunc.unwrap_python_model()
    model, unknown = served.model, None
    if pyfunc.metadata.metadata.get("id_maps") != id_maps:
        model = RemappedModel.by_raw_ids(served.model, served.user_index, served.user_active, served.item_index,
                                         users["raw_user_id"], items["raw_item_id"])
        unknown = unknown_to(model, data)
    report = evaluate_loaded(model, data, replayed_splits(split))
    return float(report["metrics"][split]["overall"]["mrr"]), unknown


def unknown_to(model: RemappedModel, data: EvalData) -> dict[str, int]:
    """Users replayed and distinct candidate items (positives and negatives) of `data`, and how many of each
    `model` does not know."""
    events = data.events
    user_ids = np.unique(events.user_id)
    item_ids = np.unique(np.concatenate([events.item_id, events.neg_item_ids.ravel()]))
    return {"users": len(user_ids), "unknown_users": int(np.sum(model.user_map.cpu().numpy()[user_ids] < 0)),
            "items": len(item_ids), "unknown_items": int(np.sum(model.item_map.cpu().numpy()[item_ids] < 0))}


def _own_maps_note(who: str, unknown: dict[str, int]) -> str:
    return (f" {who} was trained on other users/items tables and scored through its own id maps: "
            f"{unknown['unknown_users']} of {unknown['users']} replayed users and {unknown['unknown_items']} of "
            f"{unknown['items']} candidate items are unknown to it.")


def _id_map_tags(prefix: str, unknown: dict[str, int] | None, scored: bool = True) -> dict[str, str]:
    """How a model was scored: `same` id maps as the data, its `own`, or not at all (no champion)."""
    return {
        f"{prefix}_id_maps": "" if not scored else "same" if unknown is None else "own",
        f"{prefix}_unknown_users": "" if unknown is None else f"{unknown['unknown_users']}/{unknown['users']}",
        f"{prefix}_unknown_items": "" if unknown is None else f"{unknown['unknown_items']}/{unknown['items']}",
    }


def verdict(mrr: float, champion_mrr: float | None, floor: float, min_gain: float) -> str | None:
    """None when a version with `mrr` may replace the champion, else why not."""
    if mrr < floor:
        return f"MRR {mrr:.4f} is below the floor {floor:.4f}"
    if champion_mrr is not None and mrr < champion_mrr * (1 + min_gain):
        return (f"MRR {mrr:.4f} does not beat the champion's {champion_mrr:.4f} by the required "
                f"{min_gain:.1%} (needs >= {champion_mrr * (1 + min_gain):.4f})")
    return None


def validate(client: MlflowClient, cfg: RegistryConfig, spark, version: str) -> bool:
    """Score `version` and @champion on the same candidates; set @challenger on a pass, record why not otherwise."""
    name = cfg.model_name
    champion = _alias_version(client, name, CHAMPION)
    if champion == version:
        print(f"validate: {name} v{version} is already @{CHAMPION}", flush=True)
        return True
    table_version = table_versions(spark, cfg.data, [EVAL_CANDIDATES])[EVAL_CANDIDATES]
    users, items = read_id_maps(spark, cfg.data)
    id_maps = id_maps_fingerprint(users, items)
    data = load_arrays(cfg.data, spark, replayed_splits(cfg.split))  # read once, replayed for both
    mrr, unknown = score(name, version, data, cfg.split, users, items, id_maps)
    champion_mrr, champion_unknown = (score(name, champion, data, cfg.split, users, items, id_maps) if champion
                                      else (None, None))
    if table_versions(spark, cfg.data, [EVAL_CANDIDATES])[EVAL_CANDIDATES] != table_version:
        raise RuntimeError(f"{cfg.data}/eval_candidates changed while validating; rerun validate")
    reason = verdict(mrr, champion_mrr, cfg.mrr_floor, cfg.min_relative_gain)
    tags = {
        STATUS: "passed" if reason is None else "failed",
        REASON: reason or "",
        f"validation_{cfg.split}_mrr": f"{mrr:.6f}",
        "validation_champion_version": champion or "",
        "validation_kind": kind_of(client, name, version),
        "validation_champion_kind": kind_of(client, name, champion) if champion else "",
        "validation_champion_mrr": "" if champion_mrr is None else f"{champion_mrr:.6f}",
        "validation_eval_candidates_version": str(table_version),
        "validation_data": cfg.data,
        **_id_map_tags("validation", unknown),
        **_id_map_tags("validation_champion", champion_unknown, scored=champion is not None),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    against = (f"@{CHAMPION} v{champion} ({tags['validation_champion_kind'] or 'kind unknown'})" if champion
               else f"no @{CHAMPION}")
    if champion_mrr is not None:
        against += f" (MRR {champion_mrr:.4f})"
    summary = (f"Validation {tags[STATUS]} on {cfg.split} of {cfg.data}/eval_candidates v{table_version}: "
               f"{tags['validation_kind'] or 'a model of unknown kind'} MRR {mrr:.4f} against {against}"
               + (f"; {reason}" if reason else "") + ".")
    if unknown is not None:
        summary += _own_maps_note(f"v{version}", unknown)
    if champion_unknown is not None:
        summary += _own_maps_note(f"@{CHAMPION} v{champion}", champion_unknown)
    client.update_model_version(name, version, description=summary)
    if reason is None:
        client.set_registered_model_alias(name, CHALLENGER, version)
    elif _alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    print(f"validate: {name} v{version}: {summary}", flush=True)
    return reason is None


def promote(client: MlflowClient, name: str, version: str | None = None) -> str | None:
    """Move @champion to @challenger (if it is `version`, when given); return the champion's version."""
    challenger = _alias_version(client, name, CHALLENGER)
    champion = _alias_version(client, name, CHAMPION)
    if challenger is None or (version is not None and challenger != version):
        print(f"promote: no @{CHALLENGER}" + (f" at v{version}" if version else "")
              + f"; @{CHAMPION} stays at {champion and 'v' + champion}", flush=True)
        return champion
    tags = client.get_model_version(name, challenger).tags
    if tags.get(STATUS) != "passed":
        raise RuntimeError(f"{name} v{challenger} is @{CHALLENGER} but not marked passed by validate")
    if tags.get("validation_champion_version", "") != (champion or ""):
        raise RuntimeError(f"{name} v{challenger} was validated against @{CHAMPION} "
                           f"v{tags.get('validation_champion_version') or 'none'}, but @{CHAMPION} is now "
                           f"v{champion}; rerun validate")
    client.set_registered_model_alias(name, CHAMPION, challenger)
    client.delete_registered_model_alias(name, CHALLENGER)
    client.set_model_version_tag(name, challenger, "promoted_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    was = f"v{champion} ({kind_of(client, name, champion) or 'kind unknown'})" if champion else "none"
    print(f"promote: {name} @{CHAMPION} moved from {was} to v{challenger} "
          f"({kind_of(client, name, challenger) or 'kind unknown'})", flush=True)
    return challenger


def release(client: MlflowClient, cfg: RegistryConfig, spark, run_id: str) -> str | None:
    """register -> validate -> promote in one call (the scheduled job runs them as three tasks); returns the
    @champion version afterwards, which stays the old one when the run's model does not pass."""
    version = register(client, cfg.model_name, run_id)
    validate(client, cfg, spark, version)
    return promote(client, cfg.model_name, version)


def serve_command(cfg: RegistryConfig, port: int = 5001) -> str:
    """The shell command that serves @champion from this registry, in any shell started in the current folder."""
    tracking = cfg.tracking_uri or default_tracking_uri(cfg.data)
    mlflow_bin = BIN_DIR / "mlflow"
    if mlflow_bin.is_relative_to(Path.cwd()):
        mlflow_bin = mlflow_bin.relative_to(Path.cwd())
    return (f"MLFLOW_TRACKING_URI={tracking} {mlflow_bin} models serve -m models:/{cfg.model_name}@{CHAMPION} "
            f"--env-manager local -p {port}")
