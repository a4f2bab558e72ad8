"""Readers on the real samples and on bad input: every line is accepted or rejected with its reason."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import pytest

from pipelines.config import PrepareConfig
from pipelines.pipeline import mark_duplicates
from pipelines.readers import NO_FEATURE, InputError, read_source

TAOBAO_WINDOW = {"min_ts": 1511539200, "max_ts": 1512316799}


def _cfg(source, path, **kw):
    return PrepareConfig(source=source, input=str(path), output="/tmp/unused", **kw)


def _rows(df):
    return sorted((r.asDict() for r in df.collect()), key=lambda r: (r["source_file"], r["line"]))


def test_taobao_sample(spark, shared_data):
    parsed = read_source(spark, _cfg("taobao", shared_data / "taobao-sample" / "UserBehavior.csv", **TAOBAO_WINDOW))
    counts = {r["reason"]: r["count"] for r in parsed.groupBy("reason").count().collect()}
    assert counts == {None: 9996, "out_of_window": 4}  # 4 real rows before 2017-11-25 00:00 Beijing time
    first = _rows(parsed)[0]
    assert (first["raw_user_id"], first["raw_item_id"], first["ts"], first["raw_features"]) == \
        ("999477", "2200475", 1511848894, ["3607361"])


def test_lastfm_sample(spark, shared_data):
    parsed = read_source(spark, _cfg("lastfm", shared_data / "lastfm-1k-sample" / "*.tsv"))
    assert parsed.where("reason is not null").count() == 0
    rows = _rows(parsed)
    assert len(rows) == 5000
    first = rows[0]  # empty track MBID: the item is "artist - track"
    assert first["raw_item_id"] == "Deep Dish - Fuck Me Im Famous (Pacha Ibiza)-09-28-2007"
    assert first["raw_features"] == ["f1b1cf71-bd35-4e99-8624-24a6e15f133a"]
    assert first["ts"] == int(datetime(2009, 5, 4, 23, 8, 57, tzinfo=UTC).timestamp())
    assert parsed.select("raw_item_id").distinct().count() == 881 + 311  # track MBIDs + artist/track names
    assert parsed.selectExpr("explode(raw_features)").distinct().count() == 235


BAD_TAOBAO = [
    ("1,10,100,pv,1511600000", None),
    ("", "empty_line"),
    ("user_id,item_id,category_id,behavior_type,timestamp", "header"),
    ("  User_ID,item_id,CATEGORY_ID,behavior_type,timestamp ", "header"),
    ("user_id,item_id,category_id,behavior_type,timestamq", "non_numeric_id"),  # the header's length, not it
    ("1,10,100,pv", "wrong_field_count"),
    ("1,10,100,pv,1511600000,extra", "wrong_field_count"),
    ("no commas at all", "wrong_field_count"),
    ("1,,100,pv,1511600000", "missing_field"),
    ("abc,10,100,pv,1511600000", "non_numeric_id"),
    ("1,10,1e5,pv,1511600000", "non_numeric_id"),
    ("1,10,100,pv,-5", "bad_timestamp"),
    ("1,10,100,pv,12x", "bad_timestamp"),
    ("1,10,100,pv,1400000000", "out_of_window"),
    ("1,10,100,pv,1600000000", "out_of_window"),
    ("1,10,100,click,1511600000", "unknown_behavior"),
    ("1,10,100,buy,1511600000", "excluded_behavior"),
    ("2,11,101,cart,1511600001\r", None),
    ("1,10,100,pv,1511600000", "duplicate"),
]


def test_taobao_bad_lines_get_their_reason(spark, tmp_path):
    (tmp_path / "log").mkdir()
    half = len(BAD_TAOBAO) // 2
    (tmp_path / "log" / "part-0.csv").write_text("\n".join(line for line, _ in BAD_TAOBAO[:half]) + "\n")
    with gzip.open(tmp_path / "log" / "part-1.csv.gz", "wt") as f:
        f.write("\n".join(line for line, _ in BAD_TAOBAO[half:]) + "\n")
    (tmp_path / "log" / "part-2.csv").write_text("")  # an empty part is legal
    cfg = _cfg("taobao", tmp_path / "log", behaviors=["pv", "cart", "fav"], dedup=True, **TAOBAO_WINDOW)
    rows = _rows(mark_duplicates(read_source(spark, cfg)))
    assert [(r["raw"], r["reason"]) for r in rows] == [(line.rstrip("\r"), why) for line, why in BAD_TAOBAO]
    glob = _rows(read_source(spark, _cfg("taobao", tmp_path / "log" / "part-*.csv*", **TAOBAO_WINDOW)))
    assert len(glob) == len(BAD_TAOBAO)


def _movielens(folder, ratings, movies="movieId,title,genres\n1,Toy Story (1995),Adventure|Comedy\n"):
    folder.mkdir()
    (folder / "ratings.csv").write_text(ratings)
    if movies is not None:
        (folder / "movies.csv").write_text(movies)
    return folder


def test_movielens_bad_lines_and_missing_movie(spark, tmp_path):
    folder = _movielens(tmp_path / "ml", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
                                         "1,2,4.0,964982704\n1,abc,4.0,964982703\n1,1,4.0\n2,1,,964982703\n")
    rows = _rows(read_source(spark, _cfg("movielens", folder)))
    assert [r["reason"] for r in rows] == ["header", None, None, "non_numeric_id", "wrong_field_count",
                                           "missing_field"]
    assert rows[1]["raw_features"] == ["Adventure", "Comedy"]
    assert rows[2]["raw_features"] == [NO_FEATURE]  # movie 2 is not in movies.csv: kept, with no genre


def test_movielens_side_file_errors(spark, tmp_path):
    no_movies = _movielens(tmp_path / "a", "1,1,4.0,964982703\n", movies=None)
    with pytest.raises(InputError, match="movies.csv"):
        read_source(spark, _cfg("movielens", no_movies))
    no_genres = _movielens(tmp_path / "b", "1,1,4.0,964982703\n", movies="movieId,title\n1,Toy Story\n")
    with pytest.raises(InputError, match="genres"):
        read_source(spark, _cfg("movielens", no_genres))
    with pytest.raises(InputError, match="cannot be read"):
        read_source(spark, _cfg("taobao", tmp_path / "nothing-here"))


def test_lastfm_bad_lines(spark, tmp_path):
    lines = [
        ("u1\t2009-05-04T23:08:57Z\ta1\tArtist\t\tSong", None),
        ("u1\t2009-05-04 23:08:57\ta1\tArtist\tt1\tSong", "bad_timestamp"),
        ("u1\t1965-05-04T23:08:57Z\ta1\tArtist\tt1\tSong", "bad_timestamp"),
        ("u1\t2009-05-04T23:08:57Z\ta1\tArtist\t\t", "missing_field"),
        ("u1\t2009-05-04T23:08:57Z\t\t\tt1\tSong", "missing_field"),
        ("\t2009-05-04T23:08:57Z\ta1\tArtist\tt1\tSong", "missing_field"),
        ("u1\t2009-05-04T23:08:57Z\ta1", "wrong_field_count"),
    ]
    path = tmp_path / "plays.tsv"
    path.write_text("\n".join(line for line, _ in lines) + "\n")
    rows = _rows(read_source(spark, _cfg("lastfm", path)))
    assert [r["reason"] for r in rows] == [why for _, why in lines]
    assert rows[0]["raw_item_id"] == "Artist - Song"
