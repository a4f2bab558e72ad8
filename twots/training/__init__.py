"""Training: the run builder and TorchDistributor launch on the driver; the trainer, loaders and collectives on the
ranks (rank-side modules import torch only)."""
