import struct

import numpy as np
import pytest
from matplotlib.image import imread

from twots.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_drawn(path, min_w=300, min_h=200):
    w, h = png_size(path)
    assert w >= min_w and h >= min_h
    pixels = imread(path)[..., :3]
    assert pixels.std() > 0.05, "image is blank"
    return pixels


def has_colour(pixels, rgb, tol=0.03):
    return bool((np.abs(pixels - np.array(rgb)).max(axis=-1) < tol).any())


TAB_BLUE, TAB_ORANGE = (0.122, 0.467, 0.706), (1.0, 0.498, 0.055)


def test_bucket_bounds_and_t_star_position():
    assert plots.bucket_bounds("<51") == (0, 50)
    assert plots.bucket_bounds("101-200") == (101, 200)
    assert plots.bucket_bounds(">300") == (301, np.inf)
    with pytest.raises(ValueError, match="bucket label"):
        plots.bucket_bounds("many")
    buckets = ["<51", "51-100", "101-200", "201-300", ">300"]
    # t* = 50 sits exactly on the boundary between the first two buckets, 150 in the middle of the third.
    assert plots._t_star_position(buckets, 50) == pytest.approx(0.5)
    assert plots._t_star_position(buckets, 150) == pytest.approx(2.0, abs=0.01)
    assert plots._t_star_position(buckets, 1000) == pytest.approx(3.5)


def test_fig3_mrr_by_bucket(tmp_path):
    data = {"2TS": {"<51": 0.2, "51-100": 0.25, ">300": 0.3}, "Popularity": {"<51": 0.05, "51-100": 0.04}}
    path = plots.plot_mrr_by_bucket(data, t_star=50, path=tmp_path / "fig3.png")
    pixels = assert_drawn(path)
    assert has_colour(pixels, TAB_BLUE) and has_colour(pixels, TAB_ORANGE)  # one bar colour per model
    with pytest.raises(ValueError):
        plots.plot_mrr_by_bucket({}, 50, tmp_path / "none.png")


def test_fig4_embedding_change(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"is_active": a, "step": s, "change": float(rng.random() * (0.2 if a else 1.0))}
               for a in (True, False) for s in range(1, 20) for _ in range(3)]
    pixels = assert_drawn(plots.plot_embedding_change(records, tmp_path / "fig4.png"))
    assert has_colour(pixels, TAB_BLUE) and has_colour(pixels, TAB_ORANGE)  # both user groups drawn
    with pytest.raises(ValueError, match="change"):
        plots.plot_embedding_change([{"is_active": True, "step": 1}], tmp_path / "bad.png")


def test_fig5_activity_distribution(tmp_path):
    n_train = np.concatenate([np.zeros(5, int), np.random.default_rng(0).zipf(1.8, 500).clip(1, 2000)])
    assert_drawn(plots.plot_activity_distribution(n_train, t_star=20, path=tmp_path / "fig5.png"))
    with pytest.raises(ValueError, match="no user"):
        plots.plot_activity_distribution([0, 0], 20, tmp_path / "empty.png")


def test_t_star_sweep_plot(tmp_path):
    path = plots.plot_t_star_sweep({5: 0.1, 10: 0.14, 20: 0.12}, chosen=10, theory=13.2,
                                      path=tmp_path / "sweep.png")
    assert_drawn(path)
