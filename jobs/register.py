"""Register a training run's `model` as a version of the registered model; publishes `model_version`."""

from twots.config import load
from twots.mlops.registry import RegistryConfig, connect, publish, register


def main() -> None:
    cfg = load(RegistryConfig, "registry", description=__doc__)
    if cfg.run_id is None:
        raise SystemExit("config error: registry.run_id: register needs --run-id (the training run)")
    version = register(connect(cfg), cfg.model_name, cfg.run_id)
    print(f"register: run {cfg.run_id} is {cfg.model_name} v{version}", flush=True)
    publish("model_version", version)


if __name__ == "__main__":
    main()
