"""Nightly batch: top k of every user (or --users) with a registered model, written to a Delta table."""

from twots.config import load
from twots.mlops.batch import RecommendConfig, batch_recommend
from twots.mlops.registry import use_registry
from twots.spark import get_spark


def main() -> None:
    cfg = load(RecommendConfig, "serve", description=__doc__)
    use_registry(cfg.tracking_uri, cfg.registry_uri, cfg.data)
    batch_recommend(get_spark("twots-recommend"), cfg)


if __name__ == "__main__":
    main()
