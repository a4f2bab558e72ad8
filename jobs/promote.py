"""Move @champion to @challenger (the version validate passed); does nothing when there is no challenger."""

from twots.cli import run_job
from twots.config import load
from twots.data.tables import read_manifest
from twots.mlops.registry import RegistryConfig, connect, promote, publish


def main() -> None:
    cfg = load(RegistryConfig, "registry", description=__doc__)
    read_manifest(cfg.data)
    champion = promote(connect(cfg), cfg.model_name, cfg.version)
    publish("champion_version", champion)


if __name__ == "__main__":
    run_job(main)
