"""The faiss index of the served top k (twots.mlops.index) against the exact inner products, and how its kind is
chosen; the pyfunc's use of it is in tests/test_serving.py."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from twots.config import ConfigError, resolve
from twots.mlops.index import SHIPPED, ItemIndex, build_index, chosen_kind, flat_index, omp_threads
from twots.mlops.pyfunc import ServeConfig


def clustered(n: int, dim: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """n item vectors around 40 centres (as trained item vectors cluster by category) and 30 user vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    items = centres[rng.integers(40, size=n)] + 0.3 * rng.normal(size=(n, dim))
    return items.astype(np.float32), torch.from_numpy(rng.normal(size=(30, dim)).astype(np.float32))


def built(kind: str, items: np.ndarray) -> ItemIndex:
    index = flat_index(items) if kind == "flat" else build_index(items, kind, hnsw_m=16, hnsw_ef_construction=200)
    # ivf: every list probed; hnsw: a search list as large as the catalogue. Both find all of the best then.
    return ItemIndex(index, ivf_nprobe=len(items), hnsw_ef_search=len(items))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_finds_the_exact_top_k(kind):
    """On 3,000 items with distinct scores: the flat index answers the exact top k in order; ivf and hnsw (8-bit
    codes) hold the exact top 10 among their best 50 candidates, which the pyfunc rescores exactly."""
    items, users = clustered(3000, 24, seed=1)
    exact = (users @ torch.from_numpy(items).T).topk(50, dim=1).indices
    candidates = built(kind, items).candidates(users, 50)
    assert candidates.shape == (30, 50) and (candidates >= 0).all()
    if kind == "flat":
        assert torch.equal(candidates, exact)
    for row in range(len(users)):
        assert set(exact[row, :10].tolist()) <= set(candidates[row].tolist())


def test_index_returns_minus_one_past_the_catalogue():
    items, users = clustered(100, 8, seed=2)
    candidates = built("flat", items).candidates(users[:2], 120)
    assert (candidates[:, :100] >= 0).all() and (candidates[:, 100:] == -1).all()


def test_hnsw_returns_as_many_candidates_as_asked():
    """HNSW returns no more than the efSearch candidates it keeps: asked for more, it keeps as many as asked."""
    items, users = clustered(2000, 16, seed=4)
    index = ItemIndex(build_index(items, "hnsw", hnsw_m=16, hnsw_ef_construction=40), ivf_nprobe=1,
                      hnsw_ef_search=16)
    assert (index.candidates(users, 300) >= 0).all()


def test_ivf_on_a_small_catalogue_builds_quietly(capfd):
    """Fewer lists than 2 sqrt(n) when n is small, so k-means gets the 39 vectors a list faiss asks for: no warning."""
    items, _ = clustered(2000, 16, seed=3)
    index = build_index(items, "ivf", hnsw_m=16, hnsw_ef_construction=40)
    assert isinstance(index, faiss.IndexIVFScalarQuantizer) and index.nlist == 2000 // 40 and index.ntotal == 2000
    assert capfd.readouterr() == ("", "")


def test_kind_by_catalogue_size():
    assert [chosen_kind("auto", n, 100_000) for n in (99_999, 100_000)] == ["flat", "ivf"]
    assert [chosen_kind(kind, 10, 100_000) for kind in ("flat", "ivf", "hnsw", "scan")] == ["flat", "ivf", "hnsw",
                                                                                             "scan"]
    assert SHIPPED == ("ivf", "hnsw")
    with pytest.raises(ValueError, match="no shipped index of kind 'flat'"):
        build_index(np.zeros((10, 4), np.float32), "flat", hnsw_m=16, hnsw_ef_construction=40)


def test_omp_threads_are_set_for_the_block_only():
    before = faiss.omp_get_max_threads()
    with omp_threads(before + 2):
        assert faiss.omp_get_max_threads() == before + 2
    assert faiss.omp_get_max_threads() == before


def test_the_settings_are_checked_at_start():
    """`serve.index` and its settings come from the config files and flags (strings on the command line): a bad
    value fails naming the key and the accepted values."""
    assert resolve(ServeConfig, "serve", {"index": "scan", "ivf_nprobe": "64"}).model_dump(
        include={"index", "ivf_nprobe"}) == {"index": "scan", "ivf_nprobe": 64}
    with pytest.raises(ConfigError, match=r"serve.index = 'kd-tree' \(from command line\)(?s:.*)one of auto, flat"):
        resolve(ServeConfig, "serve", {"index": "kd-tree"})
    with pytest.raises(ConfigError, match=r"serve.ivf_nprobe = '0'(?s:.*)an integer >= 1"):
        resolve(ServeConfig, "serve", {"ivf_nprobe": "0"})
