"""Readers of the three raw formats: every input line becomes one row, accepted or rejected with a reason.

Each reader returns the same columns: `raw` (the line, without its line end), `source_file`, `line` (a unique
input order: Spark's file split, then the line within it), `reason` (null when accepted), and the parsed
`raw_user_id`, `raw_item_id`, `ts` (Unix seconds) and `raw_features` (array<string>, sorted, never empty).
Parsing is Spark-native (no UDFs); every field access is null-safe so that a malformed line gets a reason
instead of failing the job under ANSI mode.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import BEHAVIORS, PrepareConfig
from twots.cli import UserError

# An item without any feature (e.g. a movie missing from movies.csv) gets this one, so g(f_i) is always defined.
NO_FEATURE = "<none>"

TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
MOVIELENS_COLUMNS = ["userId", "movieId", "rating", "timestamp"]
LASTFM_COLUMNS = ["userid", "timestamp", "artid", "artname", "traid", "traname"]


class InputError(UserError):
    """The input cannot be read at all (missing path, missing side file, missing columns)."""


READABLE = "give --input an existing file, folder of part files or glob"


def check_input(path: str) -> None:
    """Before Spark starts: a local input path (no URI scheme, no glob) must exist. Spark checks the others when
    it reads them (read_lines)."""
    if not urlparse(path).scheme and not any(c in path for c in "*?[{") and not Path(path).exists():
        raise InputError("no such file or folder", path, READABLE)


def read_lines(spark: SparkSession, path: str) -> DataFrame:
    """Lines of a file, folder of part files or glob (gzip works); `line` is the input order.

    monotonically_increasing_id is (split index, row in split): unique, and the same for the same input files.
    """
    try:
        df = spark.read.text(path)
    except AnalysisException as err:
        reason = err.getMessage() if hasattr(err, "getMessage") else err
        raise InputError(f"the input cannot be read: {reason}", path, READABLE) from None
    return df.select(
        F.col("value").alias("raw"),  # without a line end: the text source ends lines at \n, \r\n and \r
        F.col("_metadata.file_path").alias("source_file"),
        F.monotonically_increasing_id().alias("line"),
    )


def _is_header(raw: Column, names: list[str], sep: str) -> Column:
    header = sep.join(names).lower()
    trimmed = F.trim(raw)
    # Lower-casing every line costs more than comparing lengths first (a line that lowers to the ASCII header has
    # its length: a character that lower-cases to more than one gives a non-ASCII mark).
    return (F.length(trimmed) == len(header)) & (F.lower(trimmed) == header)


def _all_digits(fields: list[Column], sep: str) -> Column:
    """Every field a non-empty run of digits: one regex over the fields joined by `sep` (no field holds it, they
    were split on it) instead of one regex per field."""
    return F.concat_ws(sep, *fields).rlike("^" + sep.join(["[0-9]+"] * len(fields)) + "$")


def _unix_seconds(text: Column) -> Column:
    return F.when(text.rlike(r"^[0-9]{1,12}$"), text.try_cast("long"))


def _reason(checks: list[tuple[Column, str]]) -> Column:
    """The first failing check names the reason; null when every check passes."""
    reason = F.lit(None).cast("string")
    for failed, name in reversed(checks):
        reason = F.when(failed, F.lit(name)).otherwise(reason)
    return reason


def _window_checks(ts: Column, cfg: PrepareConfig) -> list[tuple[Column, str]]:
    checks = [(ts.isNull(), "bad_timestamp")]
    if cfg.min_ts is not None:
        checks.append((ts < cfg.min_ts, "out_of_window"))
    if cfg.max_ts is not None:
        checks.append((ts > cfg.max_ts, "out_of_window"))
    return checks


def _split_fields(lines: DataFrame, sep: str, names: list[str]) -> tuple[DataFrame, list[Column]]:
    """Each field split and trimmed once, as columns the checks and the output share (not re-parsed per use)."""
    fields = F.split(lines.raw, sep, -1)
    parts = [F.trim(F.get(fields, i)).alias(f"_f{i}") for i in range(len(names))]
    split = lines.select("*", F.size(fields).alias("_n_fields"), *parts)
    return split, [F.col(f"_f{i}") for i in range(len(names))]


def _common_checks(lines: DataFrame, sep: str, names: list[str], required: list[Column]) -> list:
    missing = F.lit(False)
    for value in required:
        missing = missing | F.coalesce(value == "", F.lit(True))
    return [
        (F.trim(lines.raw) == "", "empty_line"),
        (_is_header(lines.raw, names, sep), "header"),
        (F.col("_n_fields") != len(names), "wrong_field_count"),
        (missing, "missing_field"),
    ]


def _finish(df: DataFrame, reason: Column, user: Column, item: Column, ts: Column, features: Column) -> DataFrame:
    return df.select(
        "raw", "source_file", "line", reason.alias("reason"),
        user.alias("raw_user_id"), item.alias("raw_item_id"), ts.alias("ts"),
        F.sort_array(features).alias("raw_features"),
    )


def read_taobao(spark: SparkSession, cfg: PrepareConfig) -> DataFrame:
    """UserBehavior CSV without header: user_id,item_id,category_id,behavior_type,timestamp."""
    lines, (user, item, category, behavior, ts_text) = _split_fields(read_lines(spark, cfg.input), ",", TAOBAO_COLUMNS)
    lines = lines.withColumn("_ts", _unix_seconds(ts_text))
    ts = F.col("_ts")
    checks = _common_checks(lines, ",", TAOBAO_COLUMNS, [user, item, category, behavior, ts_text])
    checks += [
        (~_all_digits([user, item, category], ","), "non_numeric_id"),
        *_window_checks(ts, cfg),
        (~behavior.isin(*BEHAVIORS), "unknown_behavior"),
        (~behavior.isin(*cfg.behaviors), "excluded_behavior"),
    ]
    return _finish(lines, _reason(checks), user, item, ts, F.array(category))


def read_movielens(spark: SparkSession, cfg: PrepareConfig) -> DataFrame:
    """ML-25M layout: ratings.csv (userId,movieId,rating,timestamp; rating ignored) and movies.csv genres."""
    lines, (user, item, rating, ts_text) = _split_fields(
        read_lines(spark, f"{cfg.input.rstrip('/')}/ratings*"), ",", MOVIELENS_COLUMNS)
    lines = lines.withColumn("_ts", _unix_seconds(ts_text))
    ts = F.col("_ts")
    checks = _common_checks(lines, ",", MOVIELENS_COLUMNS, [user, item, rating, ts_text])
    checks += [
        (~_all_digits([user, item], ","), "non_numeric_id"),
        *_window_checks(ts, cfg),
    ]
    genres = _movie_genres(spark, cfg.input)
    parsed = lines.withColumn("_item", item).join(F.broadcast(genres), "_item", "left")
    features = F.coalesce(F.col("_genres"), F.array(F.lit(NO_FEATURE)))
    return _finish(parsed, _reason(checks), user, item, ts, features)


def _movie_genres(spark: SparkSession, folder: str) -> DataFrame:
    path = f"{folder.rstrip('/')}/movies*"
    try:
        movies = spark.read.csv(path, header=True, quote='"', escape='"')
    except AnalysisException:
        raise InputError("movielens input needs movies.csv beside ratings.csv", path,
                         "add MovieLens' movies.csv (movieId,title,genres) to the --input folder") from None
    missing = {"movieId", "genres"} - set(movies.columns)
    if missing:
        raise InputError(f"movies.csv lacks the columns {sorted(missing)}", path,
                         f"give it a header with movieId and genres (it has {movies.columns})")
    genres = F.filter(F.split(F.trim("genres"), r"\|"), lambda g: g != "")
    return (movies.select(F.trim("movieId").alias("_item"), genres.alias("_genres"))
            .where(F.size("_genres") > 0)
            .groupBy("_item").agg(F.min("_genres").alias("_genres")))


def read_lastfm(spark: SparkSession, cfg: PrepareConfig) -> DataFrame:
    """Last.fm-1K tsv: user, ISO time, artist MBID, artist name, track MBID, track name.

    The item is the track MBID, or "artist - track" when the MBID is empty; the feature is the artist
    (its MBID, or its name when the MBID is empty).
    """
    lines, (user, ts_text, artist_id, artist, track_id, track) = _split_fields(
        read_lines(spark, cfg.input), "\t", LASTFM_COLUMNS)
    lines = lines.withColumn("_ts", F.unix_timestamp(F.try_to_timestamp(ts_text, F.lit("yyyy-MM-dd'T'HH:mm:ss'Z'"))))
    ts = F.col("_ts")
    item = F.when(track_id != "", track_id).otherwise(F.concat_ws(" - ", artist, track))
    feature = F.when(artist_id != "", artist_id).otherwise(artist)
    checks = _common_checks(lines, "\t", LASTFM_COLUMNS, [user, ts_text])
    checks += [
        ((track_id == "") & ((artist == "") | (track == "")), "missing_field"),
        ((artist_id == "") & (artist == ""), "missing_field"),
        (ts < 0, "bad_timestamp"),
        *_window_checks(ts, cfg),
    ]
    return _finish(lines, _reason(checks), user, item, ts, F.array(feature))


READERS = {"taobao": read_taobao, "movielens": read_movielens, "lastfm": read_lastfm}


def read_source(spark: SparkSession, cfg: PrepareConfig) -> DataFrame:
    return READERS[cfg.source](spark, cfg)
