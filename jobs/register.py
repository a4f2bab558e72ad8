"""Register a training run's `model` as a version of the registered model; publishes `model_version`."""

from twots.cli import UserError, run_job
from twots.config import load
from twots.data.tables import read_manifest
from twots.mlops.registry import RegistryConfig, connect, publish, register


def main() -> None:
    cfg = load(RegistryConfig, "registry", description=__doc__)
    if cfg.run_id is None:
        raise UserError("register needs the training run", "registry.run_id",
                        "give --run-id <id>, the id jobs/train.py printed")
    read_manifest(cfg.data)
    version = register(connect(cfg), cfg.model_name, cfg.run_id)
    print(f"register: run {cfg.run_id} is {cfg.model_name} v{version}", flush=True)
    publish("model_version", version)


if __name__ == "__main__":
    run_job(main)
