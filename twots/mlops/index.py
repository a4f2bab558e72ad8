"""The served top k's candidates from a faiss inner-product index over the scoring item vectors.

A score is the inner product of a user vector with an item's scoring vector (`item_vectors`: [x_i, g(f_i)], with
b_i appended when the model has item biases), so the index holds exactly those vectors and answers a maximum
inner-product search. Its answers are candidates only: the pyfunc rescores them exactly in float32 with the model's
own item vectors (twots.mlops.pyfunc). Kinds (`serve.index`):
- `flat`: IndexFlatIP, exact; built at load from the model (a copy of the matrix: nothing to ship).
- `ivf`: IndexIVFScalarQuantizer, 2 sqrt(n) lists by k-means, 8-bit codes; a query scans the `serve.ivf_nprobe`
  lists nearest to it. Built at log_model and shipped with the model.
- `hnsw`: IndexHNSWSQ, an HNSW graph over 8-bit codes; built at log_model and shipped.
- `auto`: flat below `serve.index_flat_below` items, ivf from there; `scan`: no index, the scan of twots.mlops.scan.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Literal

import faiss
import numpy as np
import torch

IndexKind = Literal["auto", "flat", "ivf", "hnsw", "scan"]
SHIPPED = ("ivf", "hnsw")  # built at log_model and shipped as the model's `index` artifact; flat is built at load
# 2 sqrt(n) lists, of which serve.ivf_nprobe = 128 probed found 0.99 of the exact top 10 at 200k to 1M widened
# trained items (docs/serving.md). k-means on 40 vectors a list (faiss asks for at least 39), 10 rounds instead of
# faiss's 25: the build stays minutes at 4.16M items on 2 cores, and 25 rounds found no more of the top 10.
IVF_LISTS_PER_SQRT = 2
IVF_TRAIN_PER_LIST = 40
IVF_KMEANS_ROUNDS = 10


def chosen_kind(setting: str, n_items: int, flat_below: int) -> str:
    """The index kind a catalogue of n_items gets under `serve.index` = setting."""
    if setting != "auto":
        return setting
    return "flat" if n_items < flat_below else "ivf"


def flat_index(vectors: np.ndarray) -> faiss.Index:
    """The exact index over the float32 item vectors [n, D]: a copy of them, built in a moment."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def build_index(vectors: np.ndarray, kind: str, *, hnsw_m: int, hnsw_ef_construction: int) -> faiss.Index:
    """A shipped index of `kind` (ivf, hnsw) over the float32 item vectors [n, D], built with every core."""
    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    with omp_threads(os.cpu_count() or 1):
        if kind == "ivf":
            lists = max(1, min(round(IVF_LISTS_PER_SQRT * math.sqrt(n)), n // IVF_TRAIN_PER_LIST))
            index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = IVF_KMEANS_ROUNDS
            sample = np.random.default_rng(0).choice(n, size=min(n, IVF_TRAIN_PER_LIST * lists), replace=False)
            index.train(vectors[np.sort(sample)])
        elif kind == "hnsw":
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = hnsw_ef_construction
            index.train(vectors)  # the 8-bit codes' ranges
        else:
            raise ValueError(f"no shipped index of kind {kind!r}; expected one of {SHIPPED}")
        index.add(vectors)
    return index


class ItemIndex:
    """A built or read index with its search settings; `candidates` answers many queries at once."""

    def __init__(self, index: faiss.Index, *, ivf_nprobe: int, hnsw_ef_search: int):
        self.index = index
        self.hnsw_ef_search = hnsw_ef_search if isinstance(index, faiss.IndexHNSW) else None
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = ivf_nprobe

    def candidates(self, users: torch.Tensor, n: int) -> torch.Tensor:
        """[B, n] item ids of the best inner products with users [B, D] by the index; -1 where it found fewer."""
        # HNSW keeps efSearch candidates while searching and returns no more than those.
        params = None if self.hnsw_ef_search is None else faiss.SearchParametersHNSW(
            efSearch=max(self.hnsw_ef_search, n))
        _, ids = self.index.search(np.ascontiguousarray(users.numpy(), dtype=np.float32), n, params=params)
        return torch.from_numpy(ids)


@contextmanager
def omp_threads(count: int):
    """faiss's OpenMP threads in the calling thread for the block (OpenMP keeps the setting per thread: the others
    keep theirs). torch follows it only where both load one OpenMP runtime, which depends on which was imported
    first."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
