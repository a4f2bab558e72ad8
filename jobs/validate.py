"""Score a model version and @champion on the same test candidates; set @challenger if it passes the thresholds."""

from twots.config import load
from twots.mlops.registry import RegistryConfig, connect, latest_version, publish, validate
from twots.spark import get_spark


def main() -> None:
    cfg = load(RegistryConfig, "registry", description=__doc__)
    client = connect(cfg)
    version = cfg.version or latest_version(client, cfg.model_name)
    passed = validate(client, cfg, get_spark("twots-validate"), version)
    publish("model_version", version)
    publish("validation_passed", passed)


if __name__ == "__main__":
    main()
