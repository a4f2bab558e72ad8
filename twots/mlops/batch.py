"""The nightly batch job: the served pyfunc as a Spark UDF over every user's recent history, top k to Delta."""

from __future__ import annotations

import mlflow
from pydantic import Field

from twots.data.delta import read_table, write_table
from twots.data.tables import INTERACTIONS, ITEMS, USERS
from twots.mlops.pyfunc import ServeConfig
from twots.mlops.registry import model_info


class RecommendConfig(ServeConfig):
    """The batch-recommend job: like `serve:`, with the tables to read and the table to write required."""

    data: str = Field(description="folder of the prepared Delta tables")
    output: str = Field(description="Delta table written with the top k of each user")


RESULT_TYPE = ("user_id string, start string, items array<string>, scores array<double>, "
               "unknown_items array<string>")


def recent_histories(interactions, users, items, max_history: int):
    """One request per user: raw user_id and their last `max_history` clicked raw item ids (any split), oldest first.

    DataFrames in (the interactions, users and items tables), DataFrame out (user_id, recent_items).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy("user_id").orderBy(F.col("event_id").desc())
    last = (interactions.select("user_id", "item_id", "event_id")
            .withColumn("recency", F.row_number().over(latest))
            .where(F.col("recency") <= max_history)
            .join(items.select("item_id", "raw_item_id"), "item_id"))
    histories = last.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("event_id", "raw_item_id"))).alias("clicks"))
    return (users.join(histories, "user_id", "left")
            .select(F.col("raw_user_id").alias("user_id"),
                    F.coalesce(F.transform("clicks", lambda click: click["raw_item_id"]),
                               F.array().cast("array<string>")).alias("recent_items")))


def batch_recommend(spark, cfg: RecommendConfig) -> tuple[int, int]:
    """Top k of every user (or of cfg.users) with the model at cfg.model_uri, written to the Delta table cfg.output.

    Returns the (table version, rows) written. Requested users unknown to the tables are scored too (as the model's
    new users, with no history) and counted in the log.
    """
    from pyspark.sql import functions as F

    read = lambda table: read_table(spark, f"{cfg.data}/{table}")  # noqa: E731
    # The model's own request limits (MLmodel's python_function "config"), so no history exceeds its max_history.
    limits = model_info(cfg.model_uri).flavors["python_function"].get("config") or {}
    max_history = limits.get("max_history", cfg.max_history)
    requests = recent_histories(read(INTERACTIONS), read(USERS), read(ITEMS), max_history)
    if cfg.users:
        wanted = spark.createDataFrame([(u,) for u in dict.fromkeys(cfg.users)], "user_id string")
        requests = wanted.join(requests, "user_id", "left").select(
            "user_id", F.coalesce("recent_items", F.array().cast("array<string>")).alias("recent_items"))
        unknown = len(set(cfg.users)) - requests.join(read(USERS).select(F.col("raw_user_id").alias("user_id")),
                                                      "user_id").count()
        print(f"[recommend] {len(set(cfg.users))} users requested, {unknown} unknown (scored as new users)", flush=True)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.batch_size))
    predict = mlflow.pyfunc.spark_udf(spark, cfg.model_uri, result_type=RESULT_TYPE, env_manager="local")
    scored = (requests.withColumn("k", F.lit(cfg.k).cast("long"))
              .select(predict(F.struct("user_id", "recent_items", "k")).alias("top")).select("top.*"))
    version, rows = write_table(scored, cfg.output)
    print(f"[recommend] wrote {rows} users' top {cfg.k} to {cfg.output} (Delta version {version})", flush=True)
    return version, rows
