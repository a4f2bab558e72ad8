"""Spark to Delta data pipeline: raw logs in, validated time-split tables out."""
