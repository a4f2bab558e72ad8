"""twots.training.distributed under a real TorchDistributor: 2 CPU processes, gloo."""

from __future__ import annotations

import sys

import pytest
import torch
from pyspark import cloudpickle

from twots.training import distributed

# The train functions below live in this test module, which the rank processes cannot import: ship them by value
# (TorchDistributor pickles with pyspark's own copy of cloudpickle).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def crash_on_rank_one() -> dict:
    ctx = distributed.setup(use_gpu=False)
    if ctx.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    return {"ranks_finished": distributed.finish(ctx)}


def sync_toy_gradients() -> dict:
    """Rank r looks up rows {r, 2} of a sparse table and scales a dense weight by (r + 1)."""
    ctx = distributed.setup(use_gpu=False)
    table = torch.nn.Embedding(4, 2, sparse=True)
    weight = torch.nn.Parameter(torch.ones(3))
    torch.nn.init.ones_(table.weight)
    rows = torch.tensor([ctx.rank, 2])
    loss = table(rows).sum() * (ctx.rank + 1) + (weight * (ctx.rank + 1)).sum()
    loss.backward()
    distributed.sync_gradients(ctx, [table.weight, weight])
    out = {"sparse": table.weight.grad.to_dense().tolist(), "is_sparse": table.weight.grad.is_sparse,
           "dense": weight.grad.tolist(), "mean": distributed.all_mean(ctx, [float(ctx.rank)])}
    out["ranks_finished"] = distributed.finish(ctx)
    return out


@pytest.mark.distributed
def test_crashed_rank_fails_the_job(spark, capsys):
    with pytest.raises(distributed.RankFailure, match="crash_on_rank_one"):
        distributed.run(crash_on_rank_one, num_processes=2, local_mode=True, use_gpu=False)
    assert "rank 1 fails on purpose" in capsys.readouterr().out  # it failed for the planted reason


@pytest.mark.distributed
def test_gradients_are_averaged_over_ranks_and_sparse_stays_sparse(spark):
    out = distributed.run(sync_toy_gradients, num_processes=2, local_mode=True, use_gpu=False)
    assert out["ranks_finished"] == 2
    assert out["is_sparse"]
    # Row 0: rank 0 only (x1) -> 1/2; row 1: rank 1 only (x2) -> 2/2; row 2: both (1 + 2) / 2; row 3: nobody.
    assert out["sparse"] == [[0.5, 0.5], [1.0, 1.0], [1.5, 1.5], [0.0, 0.0]]
    assert out["dense"] == [1.5, 1.5, 1.5]
    assert out["mean"] == [0.5]


def test_missing_ranks_are_reported():
    def one_rank_short() -> dict:
        return {"ranks_finished": 1}

    # Without Spark's distributor: check the driver-side count check itself through a stand-in result.
    with pytest.raises(distributed.RankFailure, match="1 of 2 ranks finished"):
        distributed.check_finished("one_rank_short", one_rank_short(), 2)


def abort_rank_one(after_result: bool) -> dict:
    """Rank 1 dies of SIGABRT: at interpreter exit, after its result was returned, or before the last collective."""
    import atexit
    import os

    ctx = distributed.setup(use_gpu=False)
    if ctx.rank == 1 and not after_result:
        os.abort()
    out = {"ranks_finished": distributed.finish(ctx), "rank_sum": ctx.world * (ctx.world - 1) // 2}
    if ctx.rank == 1:
        atexit.register(os.abort)
    return out


@pytest.mark.distributed
def test_rank_dying_after_its_result_costs_one_warning_line(spark, capsys, tmp_path):
    out = distributed.run(abort_rank_one, True, num_processes=2, local_mode=True, use_gpu=False,
                          error_dir=tmp_path)
    assert out == {"ranks_finished": 2, "rank_sum": 1}
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: after the result was complete, rank 1 was killed by SIGABRT")
    assert "Fatal Python error: Aborted" in (tmp_path / "rank-1.fatal").read_text()


@pytest.mark.distributed
def test_rank_dying_before_the_result_fails_the_job_naming_it(spark, tmp_path):
    with pytest.raises(distributed.RankFailure) as failure:
        distributed.run(abort_rank_one, False, num_processes=2, local_mode=True, use_gpu=False, error_dir=tmp_path)
    # The cause comes first; rank 0 then fails in the last collective or is stopped by torchrun.
    assert str(failure.value).startswith("distributed run of abort_rank_one failed: rank 1 was killed by SIGABRT")
    assert not (tmp_path / "rank-1.done").exists()
