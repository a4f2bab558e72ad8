"""Running a train function on N processes, and the collectives the ranks share.

Driver side: `run(fn, ...)` starts `fn` under Spark's TorchDistributor and learns how every rank ended, from what the
ranks leave in `error_dir` (a folder the driver can read: on a cluster, under the shared data folder), because
TorchDistributor itself only says "View stdout logs" (with local_mode=False) or nothing at all (its wrapper drops
torchrun's exit code):
- `rank-<r>.json`: the error a rank raised;
- `rank-<r>.done`: the rank's result was complete (`fn` returned; rank 0 also wrote `result.pkl`);
- `rank-<r>.fatal`, `rank-<r>.sigterm`: Python's tracebacks (faulthandler) when the rank was killed by a fatal signal
  (SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL) or by SIGTERM (torchrun stops the other ranks when one dies).
A rank that raised, or ended before its result was complete, fails the run with `RankFailure` naming the first cause;
a rank that died after the result was complete costs one warning line on stderr, and the result is kept. Every
collective gives up after `timeout_s` (default 10 minutes, not torch's 30) with `CollectiveTimeout`, so a rank that
died or hangs cannot keep the others waiting for hours.
Rank side (no pyspark import, so the same code runs under plain `torchrun` on a GPU box): `setup`, `finish`,
`broadcast_parameters`, `sync_gradients` and small collectives.

Gradients are synced by hand rather than by `DistributedDataParallel`: embedding tables have sparse gradients
(a dense all-reduce of a 5M-row table per step is what breaks at Taobao scale, and NCCL cannot all-reduce sparse
tensors), so sparse gradients travel as all-gathered (indices, values) and the few dense ones as one flat
all-reduce. This works the same on gloo and NCCL and with models that have no dense parameters at all.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import pickle
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600
RESULT_FILE = "result.pkl"
TIMEOUT_ENV = "TWOTS_COLLECTIVE_TIMEOUT_S"   # set by `run` in each rank, read by `setup`


class RankFailure(RuntimeError):
    """Not every rank reached the end of the train function."""


class CollectiveTimeout(RuntimeError):
    """A collective did not complete in time: another rank is stuck or gone."""


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
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if use_gpu else "gloo", timeout=timeout)
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


@torch.sparse.check_sparse_tensor_invariants(enable=False)  # said explicitly: torch warns while it is implicit
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


@dataclass(frozen=True)
class RankMain:
    """What each rank runs: `fn` with the collective timeout set; how it ended is left in `error_dir` (the module
    doc)."""

    fn: object
    error_dir: str
    timeout_s: float

    def __call__(self, *args):
        os.environ[TIMEOUT_ENV] = str(self.timeout_s)
        rank = os.environ.get("RANK", "?")
        earlier = rank_errors(self.error_dir, signals=False)
        if earlier:
            # Spark retries a failed barrier stage (spark.task.maxFailures); a rank that raised will raise again,
            # so a retry stops here. A rank killed from outside (lost executor, OOM killer) left no record: retried.
            raise RankFailure(f"not retried: rank {earlier[0]['rank']} of an earlier attempt raised "
                              f"{earlier[0]['error']}")
        _record_signals(self.error_dir, rank)
        try:
            result = self.fn(*args)
        except BaseException as err:
            if _is_timeout(err):
                err = CollectiveTimeout(f"a collective did not complete within {self.timeout_s:g} s (the collective "
                                        f"timeout, train's --collective-timeout-s): another rank is stuck or gone "
                                        f"({type(err).__name__}: {str(err).strip().splitlines()[0]})")
            record = {"rank": rank, "time": time.time(), "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()}
            Path(self.error_dir, f"rank-{rank}.json").write_text(json.dumps(record))
            raise err from None
        # Readers of Arrow files (petastorm's) hold native threads until they are collected; collected in the
        # interpreter's teardown they can abort the process with "terminate called without an active exception"
        # (apache/arrow#34314). Collect them now, while Arrow is whole.
        gc.collect()
        if rank == "0":
            _write_atomic(Path(self.error_dir, RESULT_FILE), pickle.dumps(result))
        _write_atomic(Path(self.error_dir, f"rank-{rank}.done"), str(time.time()).encode())
        return result


_SIGNAL_FILES: list = []   # open for the rank's whole life: faulthandler writes to them from a signal handler


def _record_signals(error_dir: str, rank: str) -> None:
    """Have faulthandler dump every thread's Python traceback to rank-<r>.fatal on a fatal signal and to
    rank-<r>.sigterm on SIGTERM (then die of it as before)."""
    Path(error_dir).mkdir(parents=True, exist_ok=True)
    fatal = open(Path(error_dir, f"rank-{rank}.fatal"), "w")  # noqa: SIM115 - kept open until the process ends
    term = open(Path(error_dir, f"rank-{rank}.sigterm"), "w")  # noqa: SIM115
    _SIGNAL_FILES.extend([fatal, term])
    faulthandler.enable(file=fatal, all_threads=True)
    faulthandler.register(signal.SIGTERM, file=term, all_threads=True, chain=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _is_timeout(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("timed out" in text or "timeout" in text)


# faulthandler's first line of a fatal signal's dump -> the signal
_FATAL = {"Aborted": "SIGABRT", "Segmentation fault": "SIGSEGV", "Bus error": "SIGBUS",
          "Floating-point exception": "SIGFPE", "Illegal instruction": "SIGILL"}


def rank_errors(error_dir: str | Path, signals: bool = True) -> list[dict]:
    """The errors the ranks recorded in `error_dir` ({"rank", "time", "error", "traceback"}), the first first: those
    they raised and, with `signals`, their deaths by a signal."""
    records = [json.loads(p.read_text()) for p in Path(error_dir).glob("rank-*.json")]
    dumps = sorted(Path(error_dir).glob("rank-*.fatal")) + sorted(Path(error_dir).glob("rank-*.sigterm"))
    for path in dumps if signals else []:
        dump = path.read_text()
        if dump.strip():
            first = dump.strip().splitlines()[0].removeprefix("Fatal Python error: ").strip()
            name = "SIGTERM" if path.suffix == ".sigterm" else _FATAL.get(first, first)
            records.append({"rank": path.stem.removeprefix("rank-"), "time": path.stat().st_mtime,
                            "error": f"killed by {name}", "signal": name, "traceback": dump})
    return sorted(records, key=lambda r: r["time"])


def run(fn, *args, num_processes: int, local_mode: bool = True, use_gpu: bool = False,
        error_dir: str | Path | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Run `fn(*args)` on `num_processes` ranks with TorchDistributor and return rank 0's result (every rank must
    return the same numbers).

    `fn` must return a dict holding `ranks_finished` (from `finish`). The ranks' ends reach the driver through
    `error_dir` (see the module doc; default: a new temporary folder, which every rank can reach only on one machine).
    """
    import tempfile

    from pyspark.ml.torch.distributor import TorchDistributor

    error_dir = Path(error_dir) if error_dir is not None else Path(tempfile.mkdtemp(prefix="twots-rank-errors-"))
    error_dir.mkdir(parents=True, exist_ok=True)
    for old in [*error_dir.glob("rank-*"), error_dir / RESULT_FILE]:
        old.unlink(missing_ok=True)
    if local_mode and num_processes > 1:  # what torchrun would set, without its banner saying so
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
    try:
        distributor.run(RankMain(fn, str(error_dir), timeout_s), *args)
        launch_error = ""
    except Exception as err:  # noqa: BLE001 - Spark raises py4j and pyspark errors alike; the ranks' own say more
        launch_error = str(err)[:2000]
    errors = rank_errors(error_dir)
    unfinished = [r for r in range(num_processes) if not (error_dir / f"rank-{r}.done").exists()]
    if unfinished:
        found = _describe(errors) or launch_error or (
            f"rank(s) {', '.join(map(str, unfinished))} ended without a result and without an error record (killed "
            f"from outside: the OOM killer, a lost executor?)")
        raise RankFailure(f"distributed run of {fn.__name__} failed: {found}")
    if errors:
        print("warning: after the result was complete, " + "; ".join(map(_what, errors))
              + f"; the result is kept (tracebacks in {error_dir})",
              file=sys.stderr, flush=True)
    result = pickle.loads((error_dir / RESULT_FILE).read_bytes())
    return check_finished(fn.__name__, result, num_processes)


def _describe(errors: list[dict]) -> str:
    """The first error raised (the cause; the others usually follow from it), then the other ranks'."""
    if not errors:
        return ""
    first, rest = errors[0], errors[1:]
    text = f"{_what(first)}\n{first['traceback']}"
    if rest:
        text += "then " + "; ".join(map(_what, rest))
    return text


def _what(error: dict) -> str:
    return f"rank {error['rank']} {'was' if 'signal' in error else 'raised'} {error['error']}"


def check_finished(name: str, result, num_processes: int):
    finished = result.get("ranks_finished") if isinstance(result, dict) else None
    if finished != num_processes:
        raise RankFailure(f"{name}: {finished} of {num_processes} ranks finished; see the rank logs above")
    return result
