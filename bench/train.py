"""Training and evaluation throughput on generated data; prints tables (docs/training.md quotes them).

    python bench/train.py [--rows 1000000] [--repeats 3]     # here: Spark + TorchDistributor, CPU, gloo
    torchrun --nproc_per_node=N bench/train.py ranks --data DIR [--use-gpu]   # a box without Spark (bench/gpu_train.sh)

The default mode generates a Taobao-format log of `--rows` interactions (jobs/generate.py's generator), prepares it
(the real pipeline), exports the training tables as plain Parquet (`<out>/export`, what bench/gpu_train.sh carries
to a GPU box) and measures, each `--repeats` times (medians quoted):
- stage 1 and stage 2 interactions/s with 1 and 2 processes of one thread each (the last epoch of 2; the first
  warms up), through TorchDistributor and the petastorm loader, plus peak RSS per rank;
- evaluation events/s of the online replay (val + test) on the driver, one thread;
- stage-1 step time as the embedding tables grow (users = items = 100k, 1M, 5M) with the sparse gradient sync.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

from twots.loaders import Layout, ParquetSource  # noqa: E402  (after the path set-up; torch-only imports)
from twots.stages import MODELS  # noqa: E402
from twots.trainer import StageJob, run_stages  # noqa: E402

STAGE_LR = {"stage1": 0.01, "stage2": 0.005}


def stage_jobs(sources: dict, hparams: dict, out: Path, *, epochs: int, use_gpu: bool, batch: dict[str, int],
               model: str = "2ts"):
    """One StageJob per stage of `model`, each on the model the stage before saved."""
    jobs, previous = [], None
    for plan in MODELS[model]:
        path = str(out / f"{plan.name}.pt")
        jobs.append(StageJob(name=plan.name, build=partial(plan.build, hparams), source=sources[plan.table],
                             previous_model=previous, model_path=path, checkpoint_dir=str(out / "checkpoints"),
                             epochs=epochs, lr=STAGE_LR[plan.name], batch_size=batch[plan.name], seed=0,
                             use_gpu=use_gpu, log_every=10_000, threads=1))
        previous = path
    return jobs


def batches(args) -> dict[str, int]:
    return {"stage1": args.batch1, "stage2": args.batch2}


def summary(result: dict) -> dict:
    last = result["history"][-1]
    return {"stage": result["stage"], "world": result["world"], "interactions_per_s": last["interactions_per_s"],
            "peak_rss_mb": result["peak_rss_mb"], "peak_gpu_mb": result.get("peak_gpu_mb")}


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:,.0f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- torchrun mode: no Spark, no MLflow ---------------------------------------------------------------------------

def report_main(args) -> None:
    """Collect the RESULT lines of torchrun logs into the throughput table (bench/gpu_train.sh)."""
    import torch

    runs = [json.loads(line.split(" ", 1)[1]) for log in args.logs for line in Path(log).read_text().splitlines()
            if line.startswith("RESULT ")]
    if not runs:
        sys.exit("no RESULT lines in " + ", ".join(args.logs))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (gloo fallback)"
    rows = [{"stage": r["stage"], "processes": r["world"], "interactions/s": r["interactions_per_s"],
             "peak RSS per rank MB": r["peak_rss_mb"], "peak GPU MB": r["peak_gpu_mb"] or "-"} for r in runs]
    text = f"Training throughput under torchrun on {device} (torch {torch.__version__}):\n\n" + table(rows, list(rows[0]))
    print(text)
    Path(args.out, "gpu_train.md").write_text(text + "\n")


def ranks_main(args) -> None:
    """Both stages on an exported folder under torchrun; rank 0 prints one JSON line per stage."""
    data = Path(args.data)
    layouts = json.loads((data / "layouts.json").read_text())
    sources = {t: ParquetSource(str(data / t), Layout(**{**v, "columns": tuple(v["columns"])}))
               for t, v in layouts.items()}
    hparams = json.loads((data / "hparams.json").read_text())
    hparams["side_data"] = str(data / "side_data.npz")
    out = Path(args.out) / f"run-{os.environ.get('WORLD_SIZE', '1')}"
    results = run_stages(stage_jobs(sources, hparams, out, epochs=args.epochs, use_gpu=args.use_gpu,
                                    batch=batches(args)))
    if int(os.environ.get("RANK", "0")) == 0:
        for result in results["stages"]:
            print("RESULT " + json.dumps(summary(result)), flush=True)


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


def export(spark, data: Path, out: Path) -> Path:
    """The training tables as plain Parquet + side data: the folder bench/gpu_train.sh trains from."""
    from twots.loaders import export_parquet
    from twots.train import TrainConfig, read_manifest, write_side_data

    target = out / "export"
    manifest = read_manifest(data)
    layouts = {}
    for table in ("stage1_offers", "sequences"):
        source = export_parquet(spark.read.format("delta").load(str(data / table)).coalesce(2), table,
                                target / table)
        layouts[table] = {**source.layout.__dict__, "columns": list(source.layout.columns)}
    write_side_data(spark, data, manifest, target / "side_data.npz")
    hparams = TrainConfig(data=str(data)).hparams(manifest, target / "side_data.npz")
    hparams.pop("side_data")
    (target / "layouts.json").write_text(json.dumps(layouts, indent=1))
    (target / "hparams.json").write_text(json.dumps(hparams, indent=1))
    return target


def stage1_scaling(world: int, sizes: tuple[int, ...], steps: int = 20, batch: int = 4096) -> list[dict]:
    from twots import distributed

    return distributed.run(_scaling_rank, sizes, steps, batch, num_processes=world)["rows"]


DENSE_UP_TO = 1_000_000  # the dense comparison needs a table-sized gradient per step: only the smaller tables


def _scaling_rank(sizes, steps, batch) -> dict:
    """Stage-1 steps on random offers against users = items = n, with our sparse gradient sync and, for
    comparison, with the dense all-reduce plain DDP would do. Small dims keep 5M-row tables in memory."""
    import torch

    from twots import distributed
    from twots.models import Stage1Model
    from twots.trainer import make_optimizers

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

    from twots import distributed
    from twots.evaluate import evaluate
    from twots.models import load_model
    from twots.spark import get_spark
    from twots.train import make_source, read_manifest

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ranks cannot import bench/ as a module
    out = Path(args.out)
    spark = get_spark("twots-bench-train", master="local[2]", conf={"spark.ui.enabled": "false",
                                                                     "spark.sql.shuffle.partitions": "8"})
    spark.sparkContext.setLogLevel("ERROR")
    data = prepared_data(spark, args.rows, out)
    manifest = read_manifest(data)
    exported = export(spark, data, out)
    print(f"[bench] data: {manifest['splits']} rows per split, {manifest['n_users']:,} users, "
          f"{manifest['n_items']:,} items; export for a GPU box: {exported}", flush=True)
    if args.export_only:
        return

    from twots.train import TrainConfig

    hparams = json.loads((exported / "hparams.json").read_text())
    hparams["side_data"] = str(exported / "side_data.npz")
    cfg = TrainConfig(data=str(data), loader=args.loader)
    runs = []
    for world in (1, 2):
        sources = {t: make_source(spark, cfg.model_copy(update={"num_processes": world}), t, out / f"cache-{world}")
                   for t in ("stage1_offers", "sequences")}
        for repeat in range(args.repeats):
            jobs = stage_jobs(sources, hparams, out / f"run-{world}", epochs=2, use_gpu=False, batch=batches(args))
            for result in distributed.run(run_stages, jobs, num_processes=world)["stages"]:
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

    model = load_model(out / "run-2" / "stage2.pt")
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
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch1", type=int, default=4096, help="stage-1 rows per batch per process")
    parser.add_argument("--batch2", type=int, default=256, help="stage-2 users per batch per process")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--logs", nargs="*", default=[], help="report mode: torchrun logs with RESULT lines")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    {"spark": main, "ranks": ranks_main, "report": report_main}[arguments.mode](arguments)
