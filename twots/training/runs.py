"""What a training launch runs: StageJobs (one stage each, with its StageSettings and the run's RunOptions) and the
builder of the jobs that train model kinds (twots.models.kinds), stage 1 trained once for every kind built on it.
twots.training.train, the comparison's tuning and bench/train.py build them; twots.training.launch launches them.

Torch only (the jobs it builds are pickled into the ranks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from twots.models.kinds import KINDS, STAGE1, BuildInputs, StagePlan


@dataclass(frozen=True)
class StageSettings:
    """How one stage trains: the `train.stage1` section for offer rows, `train.stage2` for sequence rows
    (StagePlan.settings)."""

    epochs: int
    lr: float
    batch_size: int
    l2: float = 0.0      # twots.training.trainer: on the rows a step touches and the dense parameters


@dataclass(frozen=True)
class RunOptions:
    """What every stage of a run shares."""

    seed: int = 0
    use_gpu: bool = False
    resume: bool = False
    log_every_s: float = 10.0
    threads: int = 0     # torch intra-op threads per rank; 0 keeps torchrun's setting


@dataclass(frozen=True)
class StageJob:
    """Everything one rank needs to train one stage; pickled into the train function."""

    name: str                      # "stage1", "stage2", ...
    build: Callable                # (previous stage's model path or None) -> nn.Module
    source: object                 # a twots.training.loaders Source
    previous_model: str | None     # the model file of the stage before, if any
    model_path: str                # where rank 0 saves the trained model (twots.models.kinds.save_model)
    checkpoint_dir: str
    settings: StageSettings        # epochs, lr, batch size, L2 (twots.training.trainer)
    options: RunOptions            # seed, device, resume, progress lines, threads
    val_check: Callable | None = None  # model -> score (higher is better), called on rank 0 after every epoch
    patience: int = 1              # with val_check: stop after this many epochs without a better score
    result_path: str | None = None  # rank 0 writes the stage's result here (JSON) once the stage is complete


def model_path(run_dir: Path, name: str) -> Path:
    """Where a stage called `name` saves its trained model under its run folder."""
    return Path(run_dir) / f"{name}.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def stage_job(plan: StagePlan, inputs: BuildInputs, source, settings: StageSettings, run_dir: Path,
              previous: str | None, options: RunOptions, name: str | None = None) -> StageJob:
    """One stage: builds with `inputs`, saves `<run_dir>/<name>.pt`, checkpoints under `<run_dir>/checkpoints`."""
    name = name or plan.name
    return StageJob(name=name, build=partial(plan.build, inputs), source=source, previous_model=previous,
                    model_path=str(model_path(run_dir, name)), checkpoint_dir=str(checkpoint_dir(run_dir)),
                    settings=settings, options=options)


def run_jobs(models: list[str], inputs: BuildInputs, sources: Mapping[str, object],
             settings: Mapping[str, StageSettings], run_dir: Callable[[str], Path], options: RunOptions,
             stage1_model: str | None = None) -> tuple[list[StageJob], dict[str, list[int]]]:
    """The StageJobs that train `models` in one launch, and model -> the indices of its stages' jobs.

    `sources` maps a stage's table (StagePlan.table) to its rows, `settings` a StagePlan.settings to its
    StageSettings, `run_dir(model)` is where a model's stages save. Stage 1 is one job shared by every kind built on
    it, or, with `stage1_model` (a trained stage-1 model file), not trained at all.
    """
    jobs: list[StageJob] = []
    shared: dict[StagePlan, int] = {}
    stages_of: dict[str, list[int]] = {}
    for model in models:
        kind = KINDS[model]
        if not kind.stages:
            raise ValueError(f"model kind {model!r} is not trained by gradient")
        plans, mine, previous = list(kind.stages), [], None
        if stage1_model is not None:
            if not kind.on_stage1 or len(plans) == 1:
                raise ValueError(f"a stage-1 model was given but {model!r} has no stage 1 to skip")
            plans, previous = plans[1:], stage1_model
        for plan in plans:
            if plan is STAGE1 and plan in shared:
                mine.append(shared[plan])
            else:
                jobs.append(stage_job(plan, inputs, sources[plan.table], settings[plan.settings], run_dir(model),
                                      previous, options))
                mine.append(len(jobs) - 1)
                if plan is STAGE1:
                    shared[plan] = mine[-1]
            previous = jobs[mine[-1]].model_path
        stages_of[model] = mine
    return jobs, stages_of
