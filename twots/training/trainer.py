"""The generic data-parallel training loop, run on every rank, for any model whose `forward(batch)` is a loss.

`run_stages(jobs)` is the function TorchDistributor (or plain torchrun, see bench/train.py) runs on each rank:
join the process group, then per stage build the model, train it for the stage's epochs with a checkpoint after
each and save it (rank 0); end with the all-reduce every rank must reach. With `StageJob.val_check`, rank 0 scores
the model after every epoch (val MRR in tuning, twots.evaluation.evaluate.ValMRR) and every rank stops once
`patience` epochs brought no better score: a whole early-stopped run is one launch.

Embedding tables (sparse gradients) are trained with SparseAdam, the other parameters with Adam; see
twots.training.distributed for how gradients are synced.

L2 (`StageSettings.l2`, one value for the whole model): every step minimises loss + l2/2 * ||w||^2 over the parameters
the step trains. SparseAdam has no weight decay, so `add_row_l2` adds l2 * w to the synced sparse gradient of the
rows the batch touched (on every rank the same rows: the union over ranks); untouched rows are neither penalised
nor moved. Dense parameters get the same coupled L2 through Adam's `weight_decay` (the gradient l2 * w, not AdamW's
decoupled lr * wd * w decay): one objective for the whole model, and the same meaning of l2 at every learning rate.

Only torch, numpy and pyarrow are needed here: no Spark, petastorm or MLflow at import time.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch
from torch import nn

from twots.files import write_json
from twots.models.kinds import save_model
from twots.training import distributed
from twots.training.loaders import epoch_seed
from twots.training.runs import StageJob


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of sparse embedding tables (for SparseAdam) and all other trainable ones (for Adam)."""
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [p for p in trainable if id(p) in sparse_ids], [p for p in trainable if id(p) not in sparse_ids]


def make_optimizers(model: nn.Module, lr: float, l2: float = 0.0) -> list[torch.optim.Optimizer]:
    """SparseAdam for the sparse embedding tables (their L2 is `add_row_l2`), Adam with weight_decay=l2 (coupled
    L2) for the rest. A model's `lr_scale(name)` (SequentialRecommender) gives a parameter its own learning rate,
    lr x scale, in a group of its own."""
    sparse, dense = split_parameters(model)
    scale_of = getattr(model, "lr_scale", lambda name: 1.0)
    scales = {id(p): scale_of(name) for name, p in model.named_parameters()}

    def groups(params):
        by_scale: dict[float, list] = {}
        for p in params:
            by_scale.setdefault(scales[id(p)], []).append(p)
        return [{"params": ps, "lr": lr * scale} for scale, ps in sorted(by_scale.items())]

    optimizers = []
    if sparse:
        optimizers.append(torch.optim.SparseAdam(groups(sparse), lr=lr))
    if dense:
        optimizers.append(torch.optim.Adam(groups(dense), lr=lr, weight_decay=l2))
    if not optimizers:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return optimizers


def add_row_l2(params: list[nn.Parameter], l2: float) -> None:
    """Add l2 * w to the sparse gradients of `params`, on the rows each gradient holds (those the step touched): the
    gradient of l2/2 * sum over touched rows of ||w_row||^2. A no-op for l2 == 0 or dense gradients."""
    if l2 == 0:
        return
    for p in params:
        if p.grad is None or not p.grad.is_sparse:
            continue
        grad = p.grad.coalesce()
        grad.values().add_(p.detach()[grad.indices()[0]], alpha=l2)  # values() of a coalesced tensor is a view
        p.grad = grad


def batch_interactions(batch: dict[str, torch.Tensor]) -> int:
    """Clicks a batch trains on: one per row of stage1_offers, one per non-padding step of sequences."""
    if "item_ids" in batch:
        return int((batch["item_ids"] >= 0).sum())
    return int(batch["user_id"].numel())


def should_stop(scores: list[float], patience: int) -> bool:
    """True once the last `patience` epochs brought no score above the best before them."""
    best = max(range(len(scores)), key=lambda e: scores[e])
    return len(scores) - 1 - best >= patience


def checkpoint_path(job: StageJob, epoch: int) -> Path:
    return Path(job.checkpoint_dir) / f"{job.name}-epoch{epoch:03d}.pt"


def latest_checkpoint(job: StageJob) -> Path | None:
    found = sorted(Path(job.checkpoint_dir).glob(f"{job.name}-epoch*.pt"))
    return found[-1] if found else None


def fit(ctx: distributed.Context, model: nn.Module, loader, job: StageJob, log=print) -> dict:
    """Train `model` on this rank's batches; every rank returns the same history (means over ranks)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = make_optimizers(model, job.settings.lr, job.settings.l2)
    history = resume(ctx, model, optimizers, job, log)
    for epoch in range(len(history), job.settings.epochs):
        torch.manual_seed(epoch_seed(job.options.seed, epoch, ctx.rank))
        history.append(train_epoch(ctx, model, params, optimizers, loader, job, epoch, log))
        if job.val_check is not None:
            history[-1].update(check_val(ctx, model, job, log))
        if ctx.is_main:
            _save_checkpoint(checkpoint_path(job, epoch), model, optimizers, history, epoch)
        if job.val_check is not None and should_stop([h["val_score"] for h in history], job.patience):
            if ctx.is_main:
                log(f"[{job.name}] stopped after epoch {epoch + 1}: no better val score in {job.patience} epoch(s)")
            break
    return {"stage": job.name, "history": history, "steps_per_epoch": loader.steps_per_epoch, "world": ctx.world}


def resume(ctx: distributed.Context, model: nn.Module, optimizers, job: StageJob, log=print) -> list[dict]:
    """With `resume`, load the stage's last checkpoint (model and optimizers) and return its epochs' history; else
    give every rank rank 0's initial weights and return an empty history."""
    ckpt = latest_checkpoint(job) if job.options.resume else None
    if ckpt is None:
        distributed.broadcast_parameters(ctx, model)
        return []
    state = load_checkpoint(ckpt, map_location=ctx.device)
    model.load_state_dict(state["model"])
    for opt, opt_state in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(opt_state)
    if ctx.is_main:
        log(f"[{job.name}] resumed from {ckpt.name}: {state['epoch'] + 1}/{job.settings.epochs} epochs done")
    return state["history"]


def train_epoch(ctx: distributed.Context, model: nn.Module, params, optimizers, loader, job: StageJob, epoch: int,
                log=print) -> dict:
    """One epoch of steps (synced gradients, row L2, optimizer steps) with progress lines on rank 0; its history
    entry, the same on every rank."""
    model.train()
    steps = loader.steps_per_epoch
    loss_sum, clicks, t0 = 0.0, 0, time.perf_counter()
    last_log = t0
    for step, batch in enumerate(loader.epoch(epoch), 1):
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = model(batch)
        loss.backward()
        distributed.sync_gradients(ctx, params)
        add_row_l2(params, job.settings.l2)
        for opt in optimizers:
            opt.step()
        loss_sum += float(loss.detach())
        clicks += batch_interactions(batch)
        now = time.perf_counter()
        if ctx.is_main and (now - last_log >= job.options.log_every_s or step == steps):
            last_log = now
            left = (now - t0) / step * (steps - step)
            log(f"[{job.name}] epoch {epoch + 1}/{job.settings.epochs} step {step}/{steps} "
                f"loss {loss_sum / step:.4f} {clicks * ctx.world / (now - t0):,.0f} interactions/s, "
                + (f"{left:.0f} s left in the epoch" if step < steps else f"epoch done in {now - t0:.1f} s"))
    seconds = distributed.all_max(ctx, time.perf_counter() - t0)  # the slowest rank's: the same on every rank
    total = distributed.all_sum(ctx, clicks)
    return {"epoch": epoch, "loss": distributed.all_mean(ctx, [loss_sum / steps])[0], "interactions": total,
            "seconds": seconds, "interactions_per_s": total / seconds}


def check_val(ctx: distributed.Context, model: nn.Module, job: StageJob, log=print) -> dict:
    """{"val_score", "val_seconds"} of job.val_check on rank 0's model, the same on every rank (the others wait)."""
    started = time.perf_counter()
    score = 0.0
    if ctx.is_main:
        model.eval()
        score = float(job.val_check(model))
        log(f"[{job.name}] val score {score:.4f} ({time.perf_counter() - started:.1f} s)")
    score = distributed.all_sum(ctx, score)
    return {"val_score": score, "val_seconds": distributed.all_max(ctx, time.perf_counter() - started)}


def _save_checkpoint(path: Path, model, optimizers, history, epoch) -> None:
    """The state dicts in `path` (tensors and plain values: it loads with weights_only=True), the epoch and the
    loss history in `<path>.json` beside it, written first: the .pt appearing marks a complete checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    path.with_suffix(".json").write_text(json.dumps({"epoch": epoch, "history": history}))
    torch.save({"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers]}, tmp)
    os.replace(tmp, path)  # a killed run never leaves a half-written checkpoint behind


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """{"model", "optimizers", "epoch", "history"} of a checkpoint written by fit."""
    path = Path(path)
    return {**torch.load(path, map_location=map_location, weights_only=True),
            **json.loads(path.with_suffix(".json").read_text())}


def run_stages(jobs: list[StageJob]) -> dict:
    """The per-rank train function: consecutive stages in one launch (one process group).

    Returns {"stages": [one result per stage], "ranks_finished"}; every rank returns the same numbers.
    """
    ctx = distributed.setup(jobs[0].options.use_gpu)
    results = [train_stage(ctx, job) for job in jobs]
    # The final collective comes after rank 0 saved the last model: a finished run always has it on disk.
    return {"stages": results, "ranks_finished": distributed.finish(ctx)}


def run_stage(job: StageJob) -> dict:
    """One stage as its own train function: its result with `ranks_finished`."""
    out = run_stages([job])
    return {**out["stages"][0], "ranks_finished": out["ranks_finished"]}


def reset_peak_rss() -> None:
    """Start this process's peak resident memory afresh at its current size (Linux >= 4.0: writing 5 to
    /proc/self/clear_refs resets VmHWM); where that is not possible the peak stays the process's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB since `reset_peak_rss` (VmHWM), or since it started."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def train_stage(ctx: distributed.Context, job: StageJob) -> dict:
    """Build, train and save (rank 0) one stage's model; returns when every rank can read the saved model. The result
    also holds the stage's wall seconds (the slowest rank's: build, loading the rows, epochs, save) and its own peak
    memory: resident, the largest rank's (`peak_rss_mb`) and the sum over ranks (`peak_rss_total_mb`), and on a GPU
    the largest rank's allocated (`peak_gpu_mb`)."""
    started = time.perf_counter()
    reset_peak_rss()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    if job.options.threads:
        torch.set_num_threads(job.options.threads)
    torch.manual_seed(job.options.seed)
    model = job.build(job.previous_model).to(ctx.device)
    loader = job.source.open(ctx.rank, ctx.world, job.settings.batch_size, job.options.seed)
    try:
        result = fit(ctx, model, loader, job)
    finally:
        loader.close()
    peak = peak_rss_mb()
    result["peak_rss_mb"] = distributed.all_max(ctx, peak)
    result["peak_rss_total_mb"] = distributed.all_sum(ctx, peak)
    if ctx.device.type == "cuda":
        result["peak_gpu_mb"] = distributed.all_max(ctx, torch.cuda.max_memory_allocated(ctx.device) / 2**20)
    if ctx.is_main:
        Path(job.model_path).parent.mkdir(parents=True, exist_ok=True)
        save_model(job.model_path, model.cpu())
    distributed.barrier(ctx)  # the next stage builds on the saved model
    result["wall_s"] = distributed.all_max(ctx, time.perf_counter() - started)
    if ctx.is_main and job.result_path:
        write_json(job.result_path, result)
    return result
