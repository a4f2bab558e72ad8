"""The data contract in code: the Delta tables of a prepared folder and their columns (docs/design.md's table).

Spark-free constants, shared by the pipeline that writes the tables, the loaders and evaluation that read them,
serving and the tests. A column added to a table is added here first.
"""

from __future__ import annotations

import json
from pathlib import Path

from twots.cli import UserError

INTERACTIONS = "interactions"
USERS = "users"
ITEMS = "items"
REJECTS = "rejects"
USER_ACTIVITY = "user_activity"
SEQUENCES = "sequences"
STAGE1_OFFERS = "stage1_offers"
EVAL_CANDIDATES = "eval_candidates"
MANIFEST = "manifest.json"

# Not a prepared table: rows of the `sequences` schema holding each user's last max_len training items, built by
# pipelines.histories.full_sequences into a view (the full-history baselines and 2TS-SingleStage train on them).
FULL_HISTORIES = "full_sequences"
# Not a prepared table either: rows of the `sequences` schema, `sequences` plus each active user's first t* training
# items as a row of an inactive user (pipelines.activity.early_sequences), written into a view beside the unchanged
# `sequences` (pipelines.views.coldstart_view); the 2ts-coldstart-all kind trains its stage 2 on them.
COLDSTART_SEQUENCES = "coldstart_sequences"

COLUMNS: dict[str, tuple[str, ...]] = {
    INTERACTIONS: ("event_id", "user_id", "item_id", "ts", "split", "feature_ids"),
    USERS: ("user_id", "raw_user_id"),
    ITEMS: ("item_id", "raw_item_id", "feature_ids", "raw_features"),
    REJECTS: ("raw", "reason", "source_file"),
    USER_ACTIVITY: ("user_id", "n_train", "is_active"),
    SEQUENCES: ("user_id", "is_active", "item_ids", "neg_item_ids", "prev_item_id"),
    STAGE1_OFFERS: ("event_id", "user_id", "item_id", "neg_item_ids"),
    EVAL_CANDIDATES: ("event_id", "user_id", "item_id", "ts", "split", "neg_item_ids", "is_repeat"),
}
TABLES = tuple(COLUMNS)

PAD_ITEM = -1  # padding at the end of item id lists read as fixed-width arrays (docs/design.md)

# Values of interactions.split / eval_candidates.split.
TRAIN, VAL, TEST = "train", "val", "test"


def read_manifest(data_dir: str | Path) -> dict:
    """The prepared folder's manifest.json (prepare's record: config, tables, counts). Folders prepared before t*
    was called `t_star` in the config record it as `threshold`: read the same."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        what = "not a prepared folder, it has no manifest.json" if Path(data_dir).is_dir() else "no such folder"
        raise UserError(what, str(data_dir), f"run jobs/prepare.py with --output {data_dir} first")
    manifest = json.loads(path.read_text())
    config = manifest.get("config", {})
    if "threshold" in config and "t_star" not in config:
        config["t_star"] = config.pop("threshold")
    return manifest
