"""The served model: an MLflow pyfunc over raw ids that adapts each user online to their recent items.

A request row is `user_id` (optional raw id), `recent_items` (raw item ids, oldest first; may be empty or absent),
`k` and optionally `exclude_clicked`. Any model kind of twots.models.kinds serves through it, by the protocol of
twots.models.protocol.SequentialRecommender alone. A user of the users table starts as the replay starts
them (their dense id and activity flag: 2TS from phi when active, else psi; CCF from their own phi when they
have training clicks, else the mean phi); a user missing from it, or no user_id, starts as the model's new users
(id -1). `start` is "phi" when the model started the user from their own embedding, else "psi" (a start shared
by users: psi, GRU4Rec's h0, the mean phi, ...). The model steps over the known recent items; a faiss index over the
item vectors (twots.mlops.index: built at log_model, or at load for the flat one) proposes candidates, which are
rescored exactly in float32, and the top k raw item ids come back with their scores. With `index: scan` one scan of
the item matrix (twots.mlops.scan) scores the whole catalogue instead. Unknown item ids are skipped and reported in
`unknown_items`; a malformed request raises MlflowException(INVALID_PARAMETER_VALUE), which the scoring server
answers with HTTP 400 and the message.

This module and what it imports is all the logged model carries as code (twots.mlops.packaging); the batch job
(twots.mlops.batch) runs it as a Spark UDF.
"""

from __future__ import annotations

from contextlib import nullcontext

import faiss
import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema
from pydantic import Field

from twots.config import Section
from twots.mlops.index import SHIPPED, IndexKind, ItemIndex, flat_index, omp_threads
from twots.mlops.scan import ItemScan, ScanKind, block_topk
from twots.models.items import pad_lists
from twots.models.kinds import load_model

# A batch of requests is scored in chunks of at most this many (request, item) scores: 128 MiB of float32,
# so a batch job's Arrow batch over a 4M-item catalogue still fits in memory (8 requests per chunk).
SCORES_PER_CHUNK = 1 << 25
RESCORE_PER_K = 4  # candidates rescored exactly per item asked for, at least serve.rescore_pool


class ServeConfig(Section):
    """Request limits baked into a logged model, and the batch-recommend job's settings (`serve:` section)."""

    max_k: int = Field(1000, ge=1, description="largest k a request may ask for")
    max_history: int = Field(500, ge=0, description="most recent_items a request may send")
    exclude_clicked: bool = Field(True, description="default for requests that do not say: drop recent_items "
                                                    "from the top k")
    index: IndexKind = Field(
        "auto", description="faiss index whose candidates are rescored exactly for the top k: flat (exact), ivf, "
        "hnsw; auto: flat below index_flat_below items, else ivf; scan: no index, the full-catalogue scan of `scan`")
    index_flat_below: int = Field(100_000, ge=1, description="auto: catalogues smaller than this get the flat index")
    ivf_nprobe: int = Field(128, ge=1, description="ivf: lists (of 2 sqrt(n_items)) a query scans")
    hnsw_m: int = Field(32, ge=2, description="hnsw: graph neighbours per item")
    hnsw_ef_construction: int = Field(100, ge=1, description="hnsw: candidates kept while building the graph")
    hnsw_ef_search: int = Field(1024, ge=1, description="hnsw: candidates kept while searching")
    rescore_pool: int = Field(256, ge=1, description="candidates of an index or rough scan rescored exactly in "
                                                     "float32: max(rescore_pool, 4k), plus the excluded clicks")
    scan: ScanKind = Field(
        "float32", description="index scan: the item matrix of the full-catalogue scan: bfloat16 halves its memory "
        "and time, int8 quarters its memory; their best candidates are rescored exactly in float32")
    model_uri: str = Field("models:/twots@champion", description="recommend: the model to run")
    tracking_uri: str | None = Field(None, description="recommend: MLflow tracking URI "
                                                       "(default sqlite:///<data>/mlflow.db)")
    registry_uri: str | None = Field(None, description="recommend: MLflow registry URI (default: the tracking URI)")
    data: str | None = Field(None, description="recommend: folder of the prepared Delta tables")
    output: str | None = Field(None, description="recommend: Delta table written with the top k of each user")
    users: list[str] = Field([], description="recommend: raw user ids to score (empty: all users)")
    k: int = Field(10, ge=1, description="recommend: items per user")
    batch_size: int = Field(512, ge=1, description="recommend: users per Arrow batch handed to the model")


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


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """Artifacts: `model` (a twots.models.kinds.save_model file), `users` and `items` (raw-id maps as Parquet), and
    `index` (a faiss index file) when the config's index is ivf or hnsw."""

    def load_context(self, context):
        self.model = load_model(context.artifacts["model"]).eval()
        users = pd.read_parquet(context.artifacts["users"])
        items = pd.read_parquet(context.artifacts["items"])
        self.user_index = pd.Index(users["raw_user_id"])
        self.user_active = users["is_active"].to_numpy(dtype=bool)
        self.item_index = pd.Index(items["raw_item_id"])
        self.raw_items = items["raw_item_id"].to_numpy(dtype=object)
        for index in (self.user_index, self.item_index):
            index.get_indexer(index[:1])  # builds the hash table now, not in the first request (4.16M ids: seconds)
        self.limits = ServeConfig(**(context.model_config or {}))
        kind, settings = self.limits.index, dict(ivf_nprobe=self.limits.ivf_nprobe,
                                                 hnsw_ef_search=self.limits.hnsw_ef_search)
        self.index, self.scan = None, None
        with torch.no_grad():
            if kind in SHIPPED:
                if "index" not in context.artifacts:
                    raise MlflowException(f"the model's config asks for index {kind!r} but the model ships no index "
                                          "artifact; serve it with model_config={'index': 'flat'} or 'scan'")
                self.index = ItemIndex(faiss.read_index(context.artifacts["index"]), **settings)
                self.model.item_vectors(torch.zeros(1, dtype=torch.long))  # the encoder's item table, before /ping
            else:
                vectors = self.model.item_vectors(torch.arange(self.model.hparams["n_items"]))
                if kind == "flat":
                    self.index = ItemIndex(flat_index(vectors.numpy()), **settings)
                else:  # scan, or auto: a model logged before the index existed records no kind; it keeps its scan
                    self.scan = ItemScan(vectors, self.limits.scan)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        requests = list(zip(*self._parse(model_input)))
        # Only a scan holds a score per (request, item); an index's candidates are few.
        rows = len(requests) if self.scan is None else max(1, SCORES_PER_CHUNK // len(self.raw_items))
        # One faiss thread in the calling thread: a request's one query is searched on one thread anyway, and a
        # batch's queries spread over every core would compete with the server's other request threads or Spark's
        # other tasks, which already keep the cores busy.
        with torch.no_grad(), omp_threads(1) if self.index is not None else nullcontext():
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

    def _top(self, state, users: torch.Tensor, excluded: list[np.ndarray], k: int):
        """The k best (scores, ids) of users [B, D] with each row's excluded item ids left out: the exact scan's
        top k, or the best candidates of the index or of a rough scan rescored exactly in float32."""
        n_items = len(self.raw_items)
        pool = min(n_items, max(self.limits.rescore_pool, RESCORE_PER_K * k))
        if self.index is not None:
            candidates = self.index.candidates(users, min(n_items, pool + max(map(len, excluded))))
            drop = torch.stack([(row < 0) | torch.isin(row, torch.from_numpy(items))
                                for row, items in zip(candidates, excluded)])
        else:
            scores = self.scan(users)
            for row, items in enumerate(excluded):
                scores[row, torch.from_numpy(items)] = float("-inf")
            if self.scan.exact:
                return block_topk(scores, k)
            rough, candidates = block_topk(scores, pool)
            drop = torch.isneginf(rough)
        exact = self.model.score(state, candidates.clamp(min=0)).masked_fill(drop, float("-inf"))
        top_scores, at = exact.topk(k, dim=1)
        return top_scores, candidates.gather(1, at)

    def _recommend(self, users, ks, excludes, histories) -> pd.DataFrame:
        n = len(users)
        user_ids = self.user_index.get_indexer([u if u is not None else "" for u in users])
        known = np.array([u is not None for u in users]) & (user_ids >= 0)
        active = known & self.user_active[np.where(known, user_ids, 0)]
        active_t = torch.from_numpy(active)
        ids_t = torch.from_numpy(np.where(known, user_ids, -1).astype(np.int64))
        state = self.model.init_state(ids_t, active_t)
        own = self.model.own_start(ids_t, active_t).numpy()

        flat = self.item_index.get_indexer([i for h in histories for i in h])
        offsets = np.cumsum([0] + [len(h) for h in histories])
        unknown, clicked = [], []
        for row in range(n):
            ids = flat[offsets[row]:offsets[row + 1]]
            unknown.append([histories[row][j] for j in np.flatnonzero(ids < 0)])
            clicked.append(ids[ids >= 0])
        state = self.model.steps(state, torch.from_numpy(pad_lists(clicked)), active_t)

        excluded = [ids if exclude else ids[:0] for ids, exclude in zip(clicked, excludes)]
        top_scores, top_ids = self._top(state, self.model.user_vector(state), excluded, max(ks))
        out_items, out_scores = [], []
        for row in range(n):
            s, i = top_scores[row, :ks[row]].numpy(), top_ids[row, :ks[row]].numpy()
            finite = np.isfinite(s)
            out_items.append(self.raw_items[i[finite]].tolist())
            out_scores.append(s[finite].astype(float).tolist())
        return pd.DataFrame({
            "user_id": users,
            "start": np.where(own, "phi", "psi"),
            "items": out_items,
            "scores": out_scores,
            "unknown_items": unknown,
        })
