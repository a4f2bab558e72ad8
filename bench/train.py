"""Training and evaluation throughput on generated data; prints tables (docs/training.md quotes them).

    bin/python bench/train.py [--rows 1000000] [--repeats 3] [--export-only]   # here: Spark + TorchDistributor, CPU
    torchrun --nproc_per_node=N bench/train.py ranks --data DIR [--models 2ts,gru4rec] [--use-gpu]
                                                     # a box without Spark (bench/gpu_train.sh)

The default mode generates a Taobao-format log of `--rows` interactions (jobs/generate.py's generator), prepares it
(the real pipeline; a prepared `<out>/data` is reused), exports the training rows as Parquet (`<out>/export`,
what bench/gpu_train.sh carries to a GPU box: stage1_offers, sequences and the full histories of `--max-len` items
the baselines train on) and measures, each `--repeats` times (medians quoted):
- stage 1 and stage 2 interactions/s with 1 and 2 processes of one thread each (the last epoch of 2; the first
  warms up), through TorchDistributor and the petastorm loader, plus peak RSS per rank;
- evaluation events/s of the online replay (val + test) on the driver, one thread;
- stage-1 step time as the embedding tables grow (users = items = 100k, 1M, 5M) with the sparse gradient sync.

The `ranks` mode trains every kind of `--models` (twots.models.kinds.KINDS) on the export, the same epochs for all,
stage 1
once for the kinds built on it, and prints per (model, stage) the wall seconds (build, data load, epochs, save; the
slowest rank's) and throughput; `report` turns those lines into a table with a total per model, stage 1 counted in
each kind built on it (as experiments.compare counts it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

from twots.data.tables import (  # noqa: E402  (after the path set-up)
    COLDSTART_SEQUENCES,
    FULL_HISTORIES,
    SEQUENCES,
    STAGE1_OFFERS,
    USER_ACTIVITY,
)
from twots.models.kinds import KINDS, TRAINABLE, BuildInputs, ModelDims  # noqa: E402  (torch-only imports)
from twots.training.loaders import Layout, ParquetSource  # noqa: E402
from twots.training.runs import RunOptions, StageSettings, run_jobs  # noqa: E402
from twots.training.trainer import StageJob, run_stages  # noqa: E402

STAGE_LR = {"stage1": 0.01, "stage2": 0.005}  # by StagePlan.settings


def stage_jobs(models: list[str], sources: dict, inputs: BuildInputs, out: Path, *, epochs: int, use_gpu: bool,
               batch: dict[str, int]) -> tuple[list[StageJob], dict[str, list[int]]]:
    """twots.training.runs.run_jobs with bench's settings: each model's stages under `out/<model>`, stage 1 shared."""
    settings = {which: StageSettings(epochs, lr, batch[which]) for which, lr in STAGE_LR.items()}
    return run_jobs(models, inputs, sources, settings, lambda model: out / model,
                    RunOptions(seed=0, use_gpu=use_gpu, log_every_s=10_000, threads=1))


def warm_up(device) -> None:
    """Pay the process's one-time costs before any stage's clock starts, else the first stage (whichever kind)
    carries them: the import of torch._dynamo by the first optimizer (~2 s) and, on a GPU, the cuBLAS and cuDNN
    set-up of a first GRU step."""
    import torch

    gru = torch.nn.GRU(8, 8, batch_first=True).to(device)
    torch.optim.Adam(gru.parameters())
    gru(torch.zeros(2, 3, 8, device=device))[0].sum().backward()


def timed_stages(jobs: list[StageJob]) -> dict:
    """twots.training.trainer.run_stages (each stage's result holds its wall seconds) after warm_up, with every rank
    starting the first stage's clock together."""
    from twots.training import distributed

    ctx = distributed.setup(jobs[0].options.use_gpu)  # run_stages joins the same process group
    warm_up(ctx.device)
    distributed.barrier(ctx)
    return run_stages(jobs)


def batches(args) -> dict[str, int]:
    return {"stage1": args.batch1, "stage2": args.batch2}


def summary(result: dict) -> dict:
    last = result["history"][-1]
    return {"stage": result["stage"], "world": result["world"], "epochs": len(result["history"]),
            "wall_s": result["wall_s"], "epochs_s": sum(e["seconds"] for e in result["history"]),
            "interactions_per_s": last["interactions_per_s"], "peak_rss_mb": result["peak_rss_mb"],
            "peak_gpu_mb": result.get("peak_gpu_mb")}


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:,.0f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- torchrun mode: no Spark, no MLflow ---------------------------------------------------------------------------

def report_rows(runs: list[dict]) -> list[dict]:
    """RESULT records -> one row per (processes, model, stage) and a total per (processes, model), with the
    model's total wall time over 2TS's (at the same process count) when 2TS ran."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["world"], r["model"]), []).append(r)
    rows = []
    for (world, model), stages in groups.items():
        twots = groups.get((world, "2ts"))
        total = sum(r["wall_s"] for r in stages)
        gpu = [r["peak_gpu_mb"] for r in stages if r["peak_gpu_mb"] is not None]
        for r in stages:
            rows.append({"model": model, "stage": r["stage"], "processes": world, "wall s": f"{r['wall_s']:,.1f}",
                         "epochs s": f"{r['epochs_s']:,.1f}", "interactions/s": r["interactions_per_s"],
                         "peak RSS per rank MB": r["peak_rss_mb"], "peak GPU MB": r["peak_gpu_mb"] or "-",
                         "wall / 2ts": ""})
        rows.append({"model": model, "stage": "total", "processes": world, "wall s": f"{total:,.1f}",
                     "epochs s": f"{sum(r['epochs_s'] for r in stages):,.1f}", "interactions/s": "",
                     "peak RSS per rank MB": max(r["peak_rss_mb"] for r in stages),
                     "peak GPU MB": max(gpu) if gpu else "-",
                     "wall / 2ts": f"{total / sum(r['wall_s'] for r in twots):.2f}" if twots else "-"})
    return rows


def report_main(args) -> None:
    """Collect the RESULT lines of torchrun logs into the wall-time and throughput table (bench/gpu_train.sh)."""
    import torch

    runs = [json.loads(line.split(" ", 1)[1]) for log in args.logs for line in Path(log).read_text().splitlines()
            if line.startswith("RESULT ")]
    if not runs:
        sys.exit("no RESULT lines in " + ", ".join(args.logs))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (gloo fallback)"
    epochs = ", ".join(str(e) for e in sorted({r["epochs"] for r in runs}))
    rows = report_rows(runs)
    text = (f"Training under torchrun on {device} (torch {torch.__version__}), {epochs} epochs per stage; "
            f"interactions/s of the last epoch; a kind's total counts the stage 1 it shares:\n\n"
            + table(rows, list(rows[0])))
    print(text)
    Path(args.out, "gpu_train.md").write_text(text + "\n")


def ranks_main(args) -> None:
    """The stages of `--models` on an exported folder under torchrun; rank 0 prints one JSON line per (model,
    stage), a shared stage 1 under each kind built on it."""
    data = Path(args.data)
    layouts = json.loads((data / "layouts.json").read_text())
    missing = sorted({p.table for m in args.models for p in KINDS[m].stages} - set(layouts))
    if missing:
        sys.exit(f"{data} has no {', '.join(missing)}: export again with bin/python bench/train.py --export-only")
    sources = {t: ParquetSource(str(data / t), Layout(**{**v, "columns": tuple(v["columns"])}))
               for t, v in layouts.items()}
    inputs = BuildInputs(ModelDims(**json.loads((data / "dims.json").read_text())), str(data / "side_data.npz"))
    out = Path(args.out) / f"run-{os.environ.get('WORLD_SIZE', '1')}"
    jobs, stages_of = stage_jobs(args.models, sources, inputs, out, epochs=args.epochs, use_gpu=args.use_gpu,
                                 batch=batches(args))
    results = timed_stages(jobs)["stages"]
    if int(os.environ.get("RANK", "0")) == 0:
        for model, indices in stages_of.items():
            for i in indices:
                print("RESULT " + json.dumps({"model": model, **summary(results[i])}), flush=True)
    sys.stderr.flush()
    # Every rank passed the final collective and the models are saved. Skip the interpreter's teardown: there, in up
    # to a quarter of the runs on 2 gloo ranks here, a rank aborted ("terminate called without an active
    # exception"), which fails the torchrun launch and with it bench/gpu_train.sh.
    os._exit(0)


# ---- default mode: Spark, TorchDistributor ------------------------------------------------------------------------

def prepared_data(spark, rows: int, out: Path) -> Path:
    from pipelines import PrepareConfig, prepare
    from pipelines.config import GenerateConfig
    from pipelines.generate import generate

    data = out / "data"
    if (data / "manifest.json").exists():
        return data
    raw = out / "raw"
    t0 = time.perf_counter()
    generate(GenerateConfig(rows=rows, output=str(raw), seed=7), spark)
    prepare(PrepareConfig(source="taobao", input=str(raw), output=str(data), eval_sample=0.1), spark)
    print(f"[bench] generated and prepared {rows:,} rows in {time.perf_counter() - t0:.0f}s", flush=True)
    return data


def export(spark, data: Path, out: Path, max_len: int) -> Path:
    """The training rows as plain Parquet + side data: the folder bench/gpu_train.sh trains from. Full histories
    (each user's last `max_len` training items, as experiments.compare builds them) are a third table, the
    2ts-coldstart-all rows (pipelines.views.coldstart_view's, at the prepared t*) a fourth."""
    from pipelines.activity import coldstart_sequences
    from pipelines.histories import full_sequences
    from twots.data.tables import read_manifest
    from twots.training.config import TrainConfig
    from twots.training.launch import write_side_data
    from twots.training.loaders import export_parquet

    def read(table: str):
        return spark.read.format("delta").load(str(data / table))

    target = out / "export"
    manifest = read_manifest(data)
    offers = read(STAGE1_OFFERS)
    activity = read(USER_ACTIVITY)
    tables = {STAGE1_OFFERS: offers, SEQUENCES: read(SEQUENCES),
              FULL_HISTORIES: full_sequences(offers, activity, max_len),
              COLDSTART_SEQUENCES: coldstart_sequences(read(SEQUENCES), offers, activity,
                                                       manifest["config"]["t_star"])}
    layouts = {}
    for table, df in tables.items():
        source = export_parquet(df.coalesce(2), STAGE1_OFFERS if table == STAGE1_OFFERS else SEQUENCES, target / table)
        layouts[table] = {**source.layout.__dict__, "columns": list(source.layout.columns)}
    write_side_data(spark, data, manifest, target / "side_data.npz")
    dims = TrainConfig(data=str(data)).dims(manifest)
    (target / "layouts.json").write_text(json.dumps(layouts, indent=1))
    (target / "dims.json").write_text(json.dumps(dims.__dict__, indent=1))
    return target


def stage1_scaling(world: int, sizes: tuple[int, ...], steps: int = 20, batch: int = 4096) -> list[dict]:
    from twots.training import distributed

    return distributed.run(_scaling_rank, sizes, steps, batch, num_processes=world)["rows"]


DENSE_UP_TO = 1_000_000  # the dense comparison needs a table-sized gradient per step: only the smaller tables


def _scaling_rank(sizes, steps, batch) -> dict:
    """Stage-1 steps on random offers against users = items = n, with our sparse gradient sync and, for
    comparison, with the dense all-reduce plain DDP would do. Small dims keep 5M-row tables in memory."""
    import torch

    from twots.models.stage1 import Stage1Model
    from twots.training import distributed
    from twots.training.trainer import make_optimizers

    ctx = distributed.setup(use_gpu=False)
    torch.set_num_threads(1)
    rows = []
    for n in sizes:
        row = {"table_rows": n}
        for sync in ("sparse", "dense"):
            if sync == "dense" and n > DENSE_UP_TO:
                row["dense all-reduce step ms"] = "-"
                continue
            torch.manual_seed(0)
            model = Stage1Model(n, n, 100, 1, item_dim=16, feature_dim=8)
            model.items.set_item_features(torch.randint(0, 100, (n, 1), generator=torch.Generator().manual_seed(0)))
            params = [p for p in model.parameters() if p.requires_grad]
            optimizers = make_optimizers(model, 0.01)
            g = torch.Generator().manual_seed(ctx.rank)
            times = []
            for _ in range(steps):
                b = {"user_id": torch.randint(0, n, (batch,), generator=g),
                     "item_id": torch.randint(0, n, (batch,), generator=g),
                     "neg_item_ids": torch.randint(0, n, (batch, 10), generator=g)}
                t0 = time.perf_counter()
                model(b).backward()
                if sync == "sparse":
                    distributed.sync_gradients(ctx, params)
                else:
                    sparse = [p for p in params if p.grad is not None and p.grad.is_sparse]
                    for p in sparse:
                        p.grad = p.grad.to_dense()
                    distributed.sync_gradients(ctx, params)
                    for p in sparse:
                        p.grad = p.grad.to_sparse(1)  # back to row-sparse: SparseAdam takes sparse gradients only
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
            step = distributed.all_max(ctx, statistics.median(times[2:]))
            row[f"{sync} sync step ms" if sync == "sparse" else "dense all-reduce step ms"] = round(step * 1000, 1)
            if sync == "sparse":
                row["interactions/s"] = batch * ctx.world / step
            del model, optimizers
        rows.append(row)
    return {"rows": rows, "ranks_finished": distributed.finish(ctx)}


def main(args) -> None:
    from pyspark import cloudpickle

    from twots.data.tables import read_manifest
    from twots.evaluation.evaluate import evaluate
    from twots.models.kinds import load_model
    from twots.spark import get_spark
    from twots.training.config import TrainConfig
    from twots.training.launch import Launcher

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ranks cannot import bench/ as a module
    out = Path(args.out)
    spark = get_spark("twots-bench-train", master="local[2]", conf={"spark.ui.enabled": "false",
                                                                     "spark.sql.shuffle.partitions": "8"})
    spark.sparkContext.setLogLevel("ERROR")
    data = prepared_data(spark, args.rows, out)
    manifest = read_manifest(data)
    exported = export(spark, data, out, args.max_len)
    print(f"[bench] data: {manifest['splits']} rows per split, {manifest['n_users']:,} users, "
          f"{manifest['n_items']:,} items; export for a GPU box: {exported}", flush=True)
    if args.export_only:
        return

    runs = []
    for world in (1, 2):
        launcher = Launcher(spark, TrainConfig(data=str(data), loader=args.loader, num_processes=world),
                            out / f"cache-{world}")
        sources = {t: launcher.source(t) for t in (STAGE1_OFFERS, SEQUENCES)}
        for _ in range(args.repeats):
            jobs, _ = stage_jobs(["2ts"], sources, launcher.inputs, out / f"run-{world}", epochs=2, use_gpu=False,
                                 batch=batches(args))
            for result in launcher.run(jobs, out / "rank-errors", train=timed_stages):
                runs.append(summary(result))
                print(f"[bench] {runs[-1]}", flush=True)
    rows = []
    for stage in ("stage1", "stage2"):
        for world in (1, 2):
            mine = [r for r in runs if r["stage"] == stage and r["world"] == world]
            rows.append({"stage": stage, "processes": world, "runs": len(mine),
                         "interactions/s (median)": statistics.median(r["interactions_per_s"] for r in mine),
                         "peak RSS per rank MB": max(r["peak_rss_mb"] for r in mine)})
    for stage in ("stage1", "stage2"):
        one, two = (r["interactions/s (median)"] for r in rows if r["stage"] == stage)
        print(f"[bench] {stage}: 2 processes / 1 process = {two / one:.2f}x")

    model = load_model(out / "run-2" / "2ts" / "stage2.pt")
    evals = [evaluate(model, data, spark)["events_per_s"] for _ in range(args.repeats)]
    scaling = stage1_scaling(2, tuple(args.table_rows))

    report = "\n\n".join([
        f"Training throughput ({args.rows:,} generated rows, loader {args.loader}, "
        f"stage-1 batch {args.batch1}, stage-2 batch {args.batch2} per process, 1 thread each):",
        table(rows, list(rows[0])),
        f"Evaluation (online replay of val + test, {manifest['eval_sample']['events']:,} events, 1 thread): "
        f"median {statistics.median(evals):,.0f} events/s over {len(evals)} runs",
        "Stage-1 step vs embedding table size (2 processes, batch 4096 each, sparse sync, median of 18 steps):",
        table(scaling, list(scaling[0]))])
    print("\n" + report)
    (out / "results.md").write_text(report + "\n")
    (out / "results.json").write_text(json.dumps({"training": rows, "evaluate_events_per_s": evals,
                                                  "scaling": scaling}, indent=1))


def models_list(text: str) -> list[str]:
    models = [m for m in text.split(",") if m]
    unknown = [m for m in models if m not in TRAINABLE]
    if unknown or not models:
        raise argparse.ArgumentTypeError(f"unknown models {unknown}; choose from {', '.join(TRAINABLE)}")
    return models


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="spark", choices=("spark", "ranks", "report"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader", default="petastorm", choices=("petastorm", "parquet"))
    parser.add_argument("--table-rows", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--out", default=str(REPO / "bench-output" / "train"))
    parser.add_argument("--data", help="ranks mode: the exported folder")
    parser.add_argument("--export-only", action="store_true", help="only generate, prepare and export the data")
    parser.add_argument("--max-len", type=int, default=200,
                        help="full histories keep each user's last N training items (compare's max_len default)")
    parser.add_argument("--models", type=models_list, default=["2ts"],
                        help="ranks mode: comma-separated trainable kinds of twots.models.kinds.KINDS")
    parser.add_argument("--epochs", type=int, default=2, help="ranks mode: epochs of every stage of every model")
    parser.add_argument("--batch1", type=int, default=4096, help="stage-1 rows per batch per process")
    parser.add_argument("--batch2", type=int, default=256, help="stage-2 users per batch per process")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--logs", nargs="*", default=[], help="report mode: torchrun logs with RESULT lines")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    {"spark": main, "ranks": ranks_main, "report": report_main}[arguments.mode](arguments)
