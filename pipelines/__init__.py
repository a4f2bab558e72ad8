"""Spark to Delta data pipeline: raw logs in, validated time-split tables out.

`prepare(cfg, spark) -> manifest dict` runs the whole pipeline (see pipelines.prepare).
"""

from pipelines.config import PrepareConfig
from pipelines.pipeline import PrepareError, prepare

__all__ = ["PrepareConfig", "PrepareError", "prepare"]
