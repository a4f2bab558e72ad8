"""Nightly batch: top k of every user (or --users) with a registered model, written to a Delta table."""

from twots.cli import run_job
from twots.config import load
from twots.data.tables import read_manifest
from twots.mlops.batch import RecommendConfig, batch_recommend
from twots.mlops.registry import model_info, use_registry
from twots.spark import get_spark


def main() -> None:
    cfg = load(RecommendConfig, "serve", description=__doc__)
    read_manifest(cfg.data)
    use_registry(cfg.tracking_uri, cfg.registry_uri, cfg.data)
    model_info(cfg.model_uri)  # before Spark starts: the model is registered
    batch_recommend(get_spark("twots-recommend"), cfg)


if __name__ == "__main__":
    run_job(main)
