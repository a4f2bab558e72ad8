"""The paper's comparison (section 5) on your data: 2TS and 2TS-Plus against baselines and ablations.

Every model reads the same tables, trains with the same DDP trainer (twots.training.trainer under TorchDistributor)
on the same offer sets, and is replayed online on the same val/test candidates (twots.evaluation.evaluate). Per model:

  popularity        training click counts (Spark), nothing to train
  ccf               stage 1 alone (twots.models.stage1.Stage1Model)
  2ts, 2ts-plus     stage 2 on `sequences` from the selected stage-1 model (shared, its time counted in each)
  2gru              the same, without phi: active users start from a learned common state (ablation)
  2ts-plus-gw       2TS-Plus with one W per user group (our variant, twots.models.kinds)
  2ts-coldstart-all 2TS whose psi and inactive GRU also learn from every active user's first t* training items
                    (our variant; a view adds those rows, pipelines.views.coldstart_view)
  2ts-tuned-items   2TS whose stage 2 also trains the item vectors, phi frozen (our variant)
  2ts-singlestage   the 2TS architecture, every parameter trained jointly from scratch on full histories (ablation)
  2ts-singlestage-k the same on 2TS's own rows (active users' last K items), not full histories (our variant)
  2ts-oos           2TS on an out-of-sample phi: stage 1 without each active user's last 40 training events, stage 2
                    on exactly those from phi and on the cold-start rows, stage 1's items fine-tuned (ours: the
                    combined kind, in 'all')
  sumpooling, gru4rec, sasrec   full histories (twots.models.baselines)

"Full histories" are each user's last `max_len` training items (pipelines.histories); models trained on them
are also warmed up on them before the replay. Tables that differ from the prepared ones (full histories, another
t*, cold-start rows) live in a *view*: a folder holding the new Delta tables and links to the prepared ones, so the
trainer and the evaluation read it like any prepared folder.

Module map: experiments.config (CompareConfig), experiments.tuning (trials, the best (lr, epoch), Popularity),
experiments.t_star (t** and the t* sweep), experiments.reporting (results table, files, MLflow),
experiments.figures (Fig. 3-5); the views are pipelines.views.

Registering (`--register-models best|all`, experiments.registering): every model is also logged as the served pyfunc;
the val-best one (or all) is registered with its kind, settings and metrics as tags, for validate / promote.

Tuning (experiments.tuning), the same budget for every trained model by default (`compare.lrs` x `compare.l2s`, up
to `max_epochs`): each (lr, l2) trains an epoch at a time, val is replayed after each epoch, and training stops after
`patience` epochs without a better val MRR; the (lr, l2, epoch) with the best val MRR is the model. Stage 1 is tuned
once on that grid as CCF; 2TS, 2TS-Plus, 2-GRU and the two variants build on CCF's chosen stage 1 and tune their
stage 2 on the same grid. Only then is test replayed. The chosen setting and every grid point's val MRRs go to
results.json and MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from experiments.config import ALL_MODELS, MODEL_NAMES, PAPER_MODELS, TRAIN_MODEL, CompareConfig
from experiments.figures import figures
from experiments.registering import register_results
from experiments.reporting import log_model_run, log_t_star, results_table, write_results
from experiments.t_star import choose_t_star
from experiments.tuning import Runner, TrialSpec, fit, load_epoch, own_stage_trials
from pipelines import PrepareConfig, prepare
from pipelines.readers import check_input
from pipelines.views import training_folders
from twots.config import resolve
from twots.data.snapshot import read_delta
from twots.data.tables import STAGE1_OFFERS, USER_ACTIVITY, read_manifest
from twots.mlops import tracking
from twots.mlops.packaging import log_model
from twots.models.kinds import KINDS, STAGE1, save_model
from twots.training.config import TrainConfig
from twots.training.train import untrained_parts

__all__ = ["ALL_MODELS", "MODEL_NAMES", "PAPER_MODELS", "CompareConfig", "compare", "results_table"]


def check_inputs(cfg: CompareConfig) -> None:
    """Before Spark starts: --data is a prepared folder, or --input exists."""
    if cfg.data is not None:
        read_manifest(cfg.data)
    else:
        check_input(cfg.input)


def prepared_data(cfg: CompareConfig, spark, out: Path, log=print) -> Path:
    """--data as given, or --input prepared into <output>/data with the `prepare` section's settings."""
    if cfg.data is not None:
        return Path(cfg.data)

    target = out / "data"
    log(f"[compare] preparing {cfg.input} ({cfg.source}) into {target}")
    prepare(resolve(PrepareConfig, "prepare", {"source": cfg.source, "input": cfg.input, "output": str(target)}),
            spark)
    return target


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def options_of(kind, tcfg, manifest: dict) -> list[str]:
    """What a kind was trained with beyond the paper's recipe (the item bias, popularity-drawn negatives): the results
    table says it."""
    prepared = manifest["config"]
    options = []
    if tcfg.item_bias and kind.takes_item_bias:
        options.append("item bias b_i (train.item_bias)")
    if kind.stages and prepared.get("sampler", "uniform") == "popularity":
        options.append(f"negatives in proportion to train count^{prepared['alpha']:g} (prepare.sampler)")
    return options


def compare(cfg: CompareConfig, spark, log=print) -> dict:
    """Run the whole comparison; returns {model: result} (also results.json and results.md under --output)."""
    import mlflow

    train_overrides = {k: v for k, v in cfg.train.items() if k != "data"}
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    base = prepared_data(cfg, spark, out, log)
    tcfg = resolve(TrainConfig, "train", {**train_overrides, "model": TRAIN_MODEL, "data": str(base)})
    runner = Runner(spark, tcfg, out, log, extra={"sasrec": {"window": cfg.sasrec_window}}, resume=cfg.resume)
    experiment_id = tracking.use_tracking(cfg.tracking_uri or tracking.default_tracking_uri(out), out, cfg.experiment)

    results, changes, val_mrr, run_ids = {}, {}, {}, {}
    with mlflow.start_run(run_name="compare", experiment_id=experiment_id) as parent:
        mlflow.log_params({**{k: json.dumps(v) if isinstance(v, (list, dict)) else v
                              for k, v in cfg.model_dump().items()}, "data_dir": str(base)})
        mlflow.log_dict(runner.manifest, "data/manifest.json")

        setup = training_setup(cfg, runner, spark, base, out, log)
        view, views_of, stage1_of = setup.view, setup.views, setup.stage1
        tuned = {}
        if cfg.launch == "all":
            specs = {name: own_stage_trials(name, cfg, runner, views_of[name], stage1_of[name])
                     for name in cfg.models}
            tuned = runner.tune({name: group for name, group in specs.items() if group})

        for name in cfg.models:
            with mlflow.start_run(run_name=name, nested=True, experiment_id=experiment_id) as run:
                model, model_view, row = fit(name, cfg, runner, view, views_of[name], stage1_of[name],
                                             tuned.get(name))
                report = runner.evaluate(model, model_view, ("val", "test"))
                val_mrr[name], run_ids[name] = report["metrics"]["val"]["overall"]["mrr"], run.info.run_id
                if cfg.register_models != "none":
                    log_model(model, str(model_view), kind=name, spark=spark)
                if name in ("2ts", "2ts-plus"):
                    changes[name] = report["changes"]
                results[name] = row = {"model": name, "test": report["metrics"]["test"], "params": n_params(model),
                                       "val_gate": report["metrics"]["val"].get("gate"),
                                       "state_norms": report["state_norms"],
                                       "full_ranking": report["full"],
                                       "options": options_of(KINDS[name], runner.tcfg, runner.manifest), **row}
                log_model_run(row)
                log(f"[compare] {name}: test MRR {row['test']['overall']['mrr']:.4f}, "
                    f"trained in {row['train_seconds']:.1f}s")

        if cfg.register_models != "none":
            versions = register_results(mlflow.MlflowClient(), cfg.model_name, cfg.register_models, run_ids, results,
                                        val_mrr, setup.t_star["t_star"], cfg, runner.tcfg, log)
            mlflow.log_dict(versions, "registered.json")
            log(f"[compare] gate them against @champion: jobs/validate.py --data {base} --model-name "
                f"{cfg.model_name} --tracking-uri {mlflow.get_tracking_uri()} --split val --version <v>, "
                "then jobs/promote.py with the same flags")
        n_train = read_delta(spark, view, USER_ACTIVITY).select("n_train").toPandas()["n_train"].to_numpy()
        written = figures(results, changes, n_train, setup.t_star["t_star"], out)
        write_results(results, setup.t_star, out)
        for path in written + [out / "results.md", out / "results.json"]:
            mlflow.log_artifact(str(path), "results")
        log(f"[compare] results under {out} (MLflow run {parent.info.run_id})")
    return results


@dataclass
class Setup:
    """What the models of a comparison train on: t* (`t_star`: its value and how it was chosen), the folder of the
    default rows (`view`), and per model the folder of each table it reads (`views`) and the stage 1 it builds on
    (`stage1`: (best trial, trials, saved model path) or None)."""

    t_star: dict
    view: Path
    views: dict[str, dict[str, Path]]
    stage1: dict[str, tuple | None]


def training_setup(cfg: CompareConfig, runner, spark, base: Path, out: Path, log=print) -> Setup:
    """t* (prepared, given, or swept on val), each model's rows (K from the 2TS settings or its kind, else the
    prepared one, at most t*; views of `base` where they differ), stage 1 tuned as CCF, and for models whose stage 2
    trains on held-out rows a stage 1 of their own at CCF's setting."""
    prepared_t, prepared_k = runner.manifest["config"]["t_star"], runner.manifest["config"]["last_k"]
    settings = runner.tcfg.two_time_scale
    trained = [KINDS[m] for m in cfg.models if KINDS[m].stages]
    # The t* sweep needs a stage 1 before t* is known (a held-out one is fit once t* is chosen).
    stage1 = tune_stage1(cfg, runner, base, out) if cfg.t_star == "auto" else None
    chosen = {"t_star": prepared_t, "source": "prepared"}
    if cfg.t_star == "auto":
        chosen = {**choose_t_star(cfg, runner, base, stage1[2], out, log), "source": "auto"}
        log_t_star(chosen, out)
    elif cfg.t_star is not None:
        chosen = {"t_star": cfg.t_star, "source": "config"}
    t_star = chosen["t_star"]
    default_k = prepared_k if t_star == prepared_t else min(prepared_k, t_star)  # an active user has > t* items
    rows = {name: KINDS[name].rows_with(settings.last_k, settings.held_out) for name in cfg.models}
    keys = {name: (r.last_k or default_k, r.held_out) for name, r in rows.items()}
    tables = {plan.table for kind in trained for plan in kind.stages} | {STAGE1_OFFERS}
    folders = {key: training_folders(spark, base, out / "views", tables, t_star=t_star, last_k=key[0],
                                     held_out_phi=key[1], max_len=cfg.max_len)
               for key in sorted({(default_k, False), *keys.values()})}
    view, plain = folders[(default_k, False)]
    if stage1 is None and any(kind.on_stage1 for kind in trained):
        stage1 = tune_stage1(cfg, runner, plain[STAGE1_OFFERS], out)
    stage1_of = {key: held_out_stage1(cfg, runner, stage1[0], views[STAGE1_OFFERS], key[0], out) if key[1] else stage1
                 for key, (_, views) in folders.items() if stage1 is not None}
    log(f"[compare] t* = {t_star} ({chosen['source']}), K = {default_k}; models: {', '.join(cfg.models)}"
        + "".join(f"; {name}: K = {key[0]}" + (", stage 1 without active users' last K" if key[1] else "")
                  for name, key in keys.items() if key != (default_k, False)))
    for part in (part for name in cfg.models for part in untrained_parts(spark, view, name)):
        log(f"[compare] warning: {part}")
    return Setup(chosen, view, {name: folders[key][1] for name, key in keys.items()},
                 {name: stage1_of.get(key) for name, key in keys.items()})


def tune_stage1(cfg: CompareConfig, runner, folder: Path, out: Path) -> tuple:
    """Stage 1 tuned as CCF on `folder`'s stage1_offers: (best trial, trials, saved model path)."""
    best, trials = runner.tune({"ccf": runner.grid("ccf", STAGE1, folder, cfg.grid("ccf"))})["ccf"]
    path = str(out / "models" / "stage1.pt")
    save_model(path, load_epoch(best, best.best_epoch))
    return best, trials, path


def held_out_stage1(cfg: CompareConfig, runner, chosen, folder: Path, last_k: int, out: Path) -> tuple:
    """Stage 1 at CCF's chosen setting (`chosen`, its best trial) on a held-out view: an out-of-sample phi."""
    spec = TrialSpec("ccf", STAGE1, folder, chosen.lr, chosen.l2, chosen.best_epoch + 1, cfg.patience, None,
                     f"stage1-held-out-k{last_k}/lr{chosen.lr:g}-l2{chosen.l2:g}")
    best, trials = runner.tune({"ccf": [spec]})["ccf"]
    path = str(out / "models" / f"stage1-held-out-k{last_k}.pt")
    save_model(path, load_epoch(best, best.best_epoch))
    return best, trials, path
