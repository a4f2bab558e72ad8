"""The Taobao-format generator: exact size, reproducible, the real log's activity, long tails and tastes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import GenerateConfig, PrepareConfig
from pipelines.generate import generate
from pipelines.readers import read_source


@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    cfg = GenerateConfig(rows=40_000, output=str(out / "a"), seed=11, items_per_category=20, parts=3)
    report = generate(cfg, spark)
    df = spark.read.csv(str(out / "a"), schema="u long, i long, c long, b string, t long").toPandas()
    return cfg, report, df


def test_exact_rows_and_readable_by_prepare(spark, generated):
    cfg, report, df = generated
    assert len(df) == report["rows"] == 40_000
    assert report == json.loads((Path(cfg.output) / "_generator.json").read_text())
    parsed = read_source(spark, PrepareConfig(source="taobao", input=cfg.output, output="/tmp/unused",
                                              min_ts=1511539200, max_ts=1512316799))
    assert parsed.where("reason is null").count() == 40_000


def test_same_seed_same_rows_other_seed_other_rows(spark, generated, tmp_path):
    cfg, _, df = generated
    again = cfg.model_copy(update={"output": str(tmp_path / "b"), "parts": 2})
    generate(again, spark)
    other = cfg.model_copy(update={"output": str(tmp_path / "c"), "seed": 12})
    generate(other, spark)
    lines = lambda path: sorted(r.value for r in spark.read.text(path).collect())  # noqa: E731
    assert lines(cfg.output) == lines(again.output)
    assert lines(cfg.output) != lines(other.output)


def test_activity_matches_the_real_log(generated):
    _, report, df = generated
    per_user = df.groupby("u").size()
    assert len(per_user) == round(40_000 / 101)
    assert per_user.mean() == pytest.approx(101, rel=0.01)
    assert per_user.median() == pytest.approx(75, rel=0.15)
    assert per_user.max() > 4 * per_user.median()  # heavy right tail
    assert set(df.b) == {"pv", "cart", "fav", "buy"} and (df.b == "pv").mean() == pytest.approx(0.905, abs=0.01)
    assert df.t.min() >= 1511539200 and df.t.max() < 1511539200 + 9 * 86400


def test_items_are_long_tailed_and_belong_to_one_category(generated):
    _, report, df = generated
    assert df.groupby("i").c.nunique().max() == 1
    pop = np.sort(df.i.value_counts().to_numpy())[::-1]
    assert pop[: len(pop) // 10].sum() > 0.4 * len(df)  # top 10% of items: over 40% of events
    assert report["items"] == report["categories"] * 20


def test_tastes_are_personal_near_the_population_and_drift_slowly(generated):
    _, report, df = generated
    n_cat = report["categories"]
    angle = 2 * np.pi * (df.c.to_numpy() + 0.5) / n_cat
    df = df.assign(x=np.cos(angle), y=np.sin(angle)).sort_values(["u", "t"])

    def spread(points):  # 1 - mean resultant length: 0 when every point sits at one place of the circle
        return 1 - np.hypot(points.x.mean(), points.y.mean())

    within = df.groupby("u")[["x", "y"]].apply(spread).mean()
    # A user's events are closer together than the population's (30% of them are population draws).
    assert within < 0.6 * spread(df)
    halves = df.assign(late=df.groupby("u").cumcount() >= df.groupby("u").u.transform("size") / 2)
    centres = halves.groupby(["u", "late"])[["x", "y"]].mean().unstack("late")
    shift = np.hypot(centres["x"][True] - centres["x"][False], centres["y"][True] - centres["y"][False])
    users = df.groupby("u")[["x", "y"]].mean()
    between = np.hypot(users.x - users.x.mean(), users.y - users.y.mean()).median()
    assert 0 < shift.median() < between  # drift is slow next to the differences between users
