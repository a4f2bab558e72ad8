"""Running a train function on N processes, and the collectives the ranks share.

Driver side: `run(fn, ...)` starts `fn` under Spark's TorchDistributor and checks that every rank finished.
Rank side (no pyspark import, so the same code runs under plain `torchrun` on a GPU box): `setup`, `finish`,
`broadcast_parameters`, `sync_gradients` and small collectives.

Gradients are synced by hand rather than by `DistributedDataParallel`: embedding tables have sparse gradients
(a dense all-reduce of a 5M-row table per step is what breaks at Taobao scale, and NCCL cannot all-reduce sparse
tensors), so sparse gradients travel as all-gathered (indices, values) and the few dense ones as one flat
all-reduce. This works the same on gloo and NCCL and with models that have no dense parameters at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class RankFailure(RuntimeError):
    """Not every rank reached the end of the train function."""


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(use_gpu: bool) -> Context:
    """Join the process group torchrun described in the environment (gloo on CPU, NCCL on GPU)."""
    if use_gpu and not torch.cuda.is_available():
        raise RuntimeError("use_gpu is set but this process sees no CUDA device")
    if use_gpu:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_gpu else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), device)


def finish(ctx: Context) -> int:
    """The last collective of a train function: every rank must reach it. Returns the number of ranks that did."""
    count = torch.ones(1, device=ctx.device)
    dist.all_reduce(count)
    dist.destroy_process_group()
    return int(count.item())


def all_mean(ctx: Context, values: list[float]) -> list[float]:
    """Mean of each value over the ranks (every rank gets the same numbers)."""
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return (t / ctx.world).tolist()


def all_sum(ctx: Context, value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item())


def barrier(ctx: Context) -> None:
    """Wait for every rank (an all-reduce, which works the same on gloo and NCCL)."""
    all_sum(ctx, 0.0)


def all_max(ctx: Context, value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_parameters(ctx: Context, module: torch.nn.Module) -> None:
    """Start every rank from rank 0's parameters and buffers."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def sync_gradients(ctx: Context, params: list[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks; sparse ones stay sparse."""
    dense = [p for p in params if p.grad is not None and not p.grad.is_sparse]
    if dense:
        flat = torch.cat([p.grad.reshape(-1) for p in dense])
        dist.all_reduce(flat)
        flat /= ctx.world
        offset = 0
        for p in dense:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = _all_gather_sparse(ctx, p.grad)


def _all_gather_sparse(ctx: Context, grad: torch.Tensor) -> torch.Tensor:
    """Mean of a row-sparse gradient over ranks: gather every rank's (rows, values), pad to the longest."""
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    size = torch.tensor([rows.numel()], device=ctx.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    pad = longest - rows.numel()
    rows = torch.cat([rows, rows.new_zeros(pad)])
    values = torch.cat([values, values.new_zeros((pad,) + values.shape[1:])])
    all_rows = [torch.empty_like(rows) for _ in range(ctx.world)]
    all_values = [torch.empty_like(values) for _ in range(ctx.world)]
    dist.all_gather(all_rows, rows)
    dist.all_gather(all_values, values)
    rows = torch.cat([r[:int(s.item())] for r, s in zip(all_rows, sizes)])
    values = torch.cat([v[:int(s.item())] for v, s in zip(all_values, sizes)]) / ctx.world
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, grad.shape).coalesce()


def run(fn, *args, num_processes: int, local_mode: bool = True, use_gpu: bool = False):
    """Run `fn(*args)` on `num_processes` ranks with TorchDistributor and return rank 0's result.

    `fn` must return a dict holding `ranks_finished` (from `finish`); TorchDistributor does not always notice a
    crashed rank, so a count short of `num_processes` raises `RankFailure` here.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
    try:
        result = distributor.run(fn, *args)
    except RuntimeError as err:
        raise RankFailure(f"distributed run of {fn.__name__} failed: {err}") from err
    return check_finished(fn.__name__, result, num_processes)


def check_finished(name: str, result, num_processes: int):
    finished = result.get("ranks_finished") if isinstance(result, dict) else None
    if finished != num_processes:
        raise RankFailure(f"{name}: {finished} of {num_processes} ranks finished; see the rank logs above")
    return result
