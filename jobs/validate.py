"""Score a model version and @champion on the same test candidates; set @challenger if it passes the thresholds."""

from twots.cli import run_job
from twots.config import load
from twots.data.tables import read_manifest
from twots.mlops.registry import RegistryConfig, connect, latest_version, model_info, publish, validate
from twots.spark import get_spark


def main() -> None:
    cfg = load(RegistryConfig, "registry", description=__doc__)
    read_manifest(cfg.data)
    client = connect(cfg)
    version = cfg.version or latest_version(client, cfg.model_name)
    model_info(f"models:/{cfg.model_name}/{version}")
    passed = validate(client, cfg, get_spark("twots-validate"), version)
    publish("model_version", version)
    publish("validation_passed", passed)


if __name__ == "__main__":
    run_job(main)
