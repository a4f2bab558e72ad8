"""Taobao scale, end to end: generate N Taobao-format rows, prepare them, train 2TS (stage 1 and stage 2, one epoch
each), evaluate on a user sample, register, and serve the model through the real `mlflow models serve`.

    bin/python bench/scale.py [--rows 100000000] [--workdir /tmp/twots-scale-<rows>] [--eval-sample 0.01]
                              [--driver-memory 8g] [--serve-items 4160000] [--keep] [--from-step train]

Each step runs as its own process, the job a user would run (jobs/generate.py, prepare.py, train.py,
evaluate.py, register.py; the serve step is this script's `serve-step` mode), with the Spark driver from
--master and --driver-memory. Per step it records: wall seconds; the peak resident memory of the step's process
tree and of its parts (the Python driver, the Spark driver JVM with its Python workers, the training ranks, the model
server), sampled every 0.2 s; the training ranks' own peak (each rank's ru_maxrss, the largest); the disk used by
the step's outputs (du); rows in and rows out; the rate and, when N < 100M, the time projected linearly to 100M
rows (labelled as such: fixed costs such as JVM start-up make it pessimistic for small N), and with --baseline
(another run's scale.json, at other rows and the same settings) the line through both runs (a fixed cost plus a
cost per row). The table is printed and written to <workdir>/scale.json and scale.md after every step.

Resume: each finished step writes <workdir>/steps/<step>.json. A rerun with the same --workdir skips the steps whose
record, same settings and outputs exist, and reruns the first other step and every step after it (--from-step NAME
forces that). A failed step keeps the earlier records, prints which step failed with its error, and exits 1.
Without --keep, the outputs (raw CSV, tables, runs) are deleted once every step has succeeded; the records stay.

Serving: the trained model's catalogue holds the items that occur in the N rows (about 4.17M at 100M; fewer below):
it is served by the scan of --scan (serve.index scan: the version training logged has an index, so the step logs it
again as twots-<scan>; bench/serve.py --trained compares the scans with the index). --serve-items M also serves a
random 2TS model of the same kind and dimensions over M synthetic items (bench/serve.py's tables and model, by the
scan too), so the latency at the full catalogue is measured at any N.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.memory import PeakRSS  # noqa: E402  (after the path set-up)

TARGET_ROWS = 100_000_000
MEMORY_GROUPS = {"jvm": "org.apache.spark.deploy.SparkSubmit", "ranks": "torch.distributed.run",
                 "server": "mlflow models serve"}
MEMORY_COLUMNS = ("total", "driver", "jvm", "ranks", "server")
PROJECTIONS = {"projected_100m_s": "at 100M rows, linear projection",
               "projected_2pt_s": "at 100M rows, two-point projection"}


@dataclass(frozen=True)
class Step:
    """One step: its job's command line, the settings (argparse names) its result depends on, the folders and files
    it writes (their disk use is the step's), `measure`, which reads the step's result from its outputs and output
    lines once it has run, whether its outputs are folders of its own (deleted before it runs: a failed attempt's
    partial outputs) and whether its time grows with the rows (projected to 100M)."""

    name: str
    command: Callable[[argparse.Namespace, dict], list[str]]
    settings: tuple[str, ...]
    outputs: Callable[[Path], list[Path]]
    measure: Callable[[argparse.Namespace, dict, str], dict]
    owns: bool = False
    scales: bool = True


# ---------------------------------------------------------------- bookkeeping (pure)

def first_to_run(steps: list[Step], records: dict[str, dict], settings: dict[str, dict], workdir: Path,
                 from_step: str | None = None) -> int:
    """Index of the first step to run: the first without a finished record of the same settings whose outputs all
    exist, or `from_step` if that comes earlier. Every step after it runs too (its inputs change)."""
    names = [s.name for s in steps]
    if from_step is not None and from_step not in names:
        raise ValueError(f"--from-step {from_step!r}: the steps are {', '.join(names)}")
    for index, step in enumerate(steps):
        record = records.get(step.name)
        done = (record is not None and record.get("status") == "ok" and record.get("settings") == settings[step.name]
                and all(path.exists() for path in step.outputs(workdir)))
        if not done or step.name == from_step:
            return index
    return len(steps)


def projection(wall_s: float, rows: int, target: int = TARGET_ROWS) -> float | None:
    """Seconds at `target` rows, linear in the rows from one measured run; None when rows >= target."""
    return wall_s * target / rows if rows < target else None


def two_point(rows_a: int, wall_a: float, rows_b: int, wall_b: float, target: int = TARGET_ROWS) -> float | None:
    """Seconds at `target` rows from two runs of one step at other sizes: a fixed cost plus a cost per row (the
    line through both). None when the larger run was not slower (no per-row cost seen)."""
    per_row = (wall_b - wall_a) / (rows_b - rows_a)
    if per_row <= 0:
        return None
    return wall_a + per_row * (target - rows_a)


def rate(count: int | None, wall_s: float) -> float | None:
    return count / wall_s if count and wall_s > 0 else None


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f}"


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, int) or value >= 100 else f"{value:,.1f}"


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.0f} s ({seconds / 3600:.1f} h)"


def markdown(records: list[dict], rows: int) -> str:
    """The step table: wall, memory (GB), disk (MB), rows in / out, rate and the projections to 100M rows."""
    head = ["step", "status", "wall s", "peak RSS GB (tree)", "driver py", "driver JVM", "ranks (sum)",
            "rank max", "server", "disk MB", "rows in", "rows out", "rows/s"]
    projections = [key for key in PROJECTIONS if any(r.get(key) for r in records)]
    head += [PROJECTIONS[key] for key in projections]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        mem = r.get("peak_rss", {})
        rank_max = r.get("details", {}).get("rank_peak_rss_mb")
        lines.append("| " + " | ".join([
            r["step"], r["status"], f"{r['wall_s']:.1f}", *(_gb(mem.get(k)) for k in MEMORY_COLUMNS[:3]),
            _gb(mem.get("ranks") or None), "-" if rank_max is None else f"{rank_max / 1e3:.2f}",
            _gb(mem.get("server") or None), _mb(r.get("disk_bytes")), _num(r.get("rows_in")),
            _num(r.get("rows_out")), _num(r.get("rows_per_s")), *(_hours(r.get(key)) for key in projections)]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the steps

def _data(w: Path) -> Path:
    return w / "data"


def _last_json(log: str, key: str):
    """The value of `key` in the last JSON line of a job's output that has it (what twots.mlops.registry.publish
    prints)."""
    for line in reversed(log.splitlines()):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                continue
            if key in found:
                return found[key]
    raise RuntimeError(f"the job's output has no JSON line with {key!r}")


def measure_generate(args, done: dict, log: str) -> dict:
    report = json.loads((args.workdir / "raw" / "_generator.json").read_text())
    print(f"[scale] generated {report['rows']:,} rows: {report['users']:,} users, {report['items']:,} items made "
          f"(about 95 % occur: prepare counts them), {report['categories']:,} categories (Taobao at 100M: about 988k "
          f"users, 4.16M items, 9.4k categories)", flush=True)
    return {"rows_in": None, "rows_out": report["rows"], "scale_rows": report["rows"],
            "details": {k: report[k] for k in ("users", "items", "categories", "events_per_user")}}


def measure_prepare(args, done: dict, log: str) -> dict:
    manifest = json.loads((_data(args.workdir) / "manifest.json").read_text())
    tables = {name: t["rows"] for name, t in manifest["tables"].items()}
    return {"rows_in": manifest["input_rows"], "rows_out": manifest["accepted"], "scale_rows": manifest["input_rows"],
            "details": {"tables_rows": tables, "timings_s": manifest["timings_s"], "n_users": manifest["n_users"],
                        "n_items": manifest["n_items"], "eval_events": manifest["eval_sample"]["events"]}}


def _tracking(args) -> str:
    import mlflow

    from twots.mlops.tracking import default_tracking_uri

    uri = default_tracking_uri(_data(args.workdir))
    mlflow.set_tracking_uri(uri)
    return uri


def measure_train(args, done: dict, log: str) -> dict:
    import mlflow

    run_id = _last_json(log, "run_id")
    model = re.search(r"^run \S+: model (\S+)$", log, re.MULTILINE)
    _tracking(args)
    stages = [mlflow.artifacts.load_dict(f"runs:/{run_id}/stages/{stage}.json") for stage in ("stage1", "stage2")]
    rows = sum(entry["interactions"] for s in stages for entry in s["history"])
    manifest = done["prepare"]["details"]
    return {"rows_in": rows, "rows_out": manifest["n_users"] + manifest["n_items"], "scale_rows": rows,
            "details": {"run_id": run_id, "model_path": model.group(1) if model else None,
                        "rank_peak_rss_mb": max(s["peak_rss_mb"] for s in stages),
                        "stages": {s["stage"]: {"wall_s": round(s["wall_s"], 1),
                                                "interactions": sum(e["interactions"] for e in s["history"]),
                                                "interactions_per_s": round(s["history"][-1]["interactions_per_s"]),
                                                "loss": s["history"][-1]["loss"],
                                                "rank_peak_rss_mb": round(s["peak_rss_mb"])} for s in stages}}}


def measure_evaluate(args, done: dict, log: str) -> dict:
    from mlflow import MlflowClient

    _tracking(args)
    metrics = MlflowClient().get_run(done["train"]["details"]["run_id"]).data.metrics
    events = int(sum(metrics.get(f"{split}/count", 0) for split in ("val", "test")))
    return {"rows_in": done["prepare"]["details"]["eval_events"], "rows_out": events, "scale_rows": events,
            "details": {name: round(metrics[name], 4) for name in
                        ("val/mrr", "test/mrr", "test/recall_at_10", "test/full_mrr", "evaluate_events_per_s")
                        if name in metrics}}


def measure_register(args, done: dict, log: str) -> dict:
    return {"rows_in": None, "rows_out": None, "scale_rows": None,
            "details": {"model": "twots", "version": str(_last_json(log, "model_version"))}}


def measure_serve(args, done: dict, log: str) -> dict:
    served = _last_json(log, "served")
    trained = served["trained"]
    print(f"[scale] trained model, {trained['n_items']:,} items ({trained['scan']} scan): first request "
          f"{trained['first_ms']:.0f} ms, p50 {trained['p50']:.1f} ms, p99 {trained['p99']:.1f} ms", flush=True)
    return {"rows_in": trained["requests"], "rows_out": trained["requests"], "scale_rows": None, "details": served}


STEPS = [
    Step("generate", lambda a, d: ["jobs/generate.py", "--rows", str(a.rows), "--output", str(a.workdir / "raw"),
                                   "--seed", str(a.seed)],
         ("rows", "seed"), lambda w: [w / "raw"], measure_generate, owns=True),
    Step("prepare", lambda a, d: ["jobs/prepare.py", "--source", "taobao", "--input", str(a.workdir / "raw"),
                                  "--output", str(_data(a.workdir)), "--eval-sample", str(a.eval_sample),
                                  *(["--partitions", str(a.partitions)] if a.partitions else [])],
         ("eval_sample", "partitions"), lambda w: [_data(w)], measure_prepare, owns=True),
    Step("train", lambda a, d: ["jobs/train.py", "--data", str(_data(a.workdir)), "--model", "2ts",
                                "--stage1.epochs", "1", "--stage2.epochs", "1",
                                "--num-processes", str(a.num_processes), "--evaluate", "false"],
         ("num_processes",), lambda w: [_data(w) / "runs" / "2ts", _data(w) / "mlartifacts"], measure_train),
    Step("evaluate", lambda a, d: ["jobs/evaluate.py", "--data", str(_data(a.workdir)),
                                   "--run-id", d["train"]["details"]["run_id"],
                                   *([] if a.full_ranking else ["--full-users", "0"])],
         ("full_ranking",), lambda w: [], measure_evaluate),
    Step("register", lambda a, d: ["jobs/register.py", "--data", str(_data(a.workdir)),
                                   "--run-id", d["train"]["details"]["run_id"]],
         (), lambda w: [_data(w) / "mlflow.db"], measure_register, scales=False),
    Step("serve", lambda a, d: ["bench/scale.py", "serve-step", "--data", str(_data(a.workdir)),
                                "--model", d["train"]["details"]["model_path"],
                                "--version", d["register"]["details"]["version"], "--out", str(a.workdir / "serve"),
                                "--scan", a.scan, "--serve-items", str(a.serve_items),
                                "--requests", str(a.requests), "--history", str(a.history)],
         ("scan", "serve_items", "requests", "history"), lambda w: [w / "serve"], measure_serve, owns=True),
]


# ---------------------------------------------------------------- running a step

def du(paths: list[Path]) -> int:
    """Bytes on disk of the files under `paths`."""
    total = 0
    for path in paths:
        files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file()) if path.exists() else []
        total += sum(f.lstat().st_blocks * 512 for f in files)
    return total


def run_step(index: int, step: Step, args, done: dict, env: dict) -> dict:
    """Run one step's job, sampling its memory; its record (status "failed" with the error's last lines if the
    job exits non-zero or its result cannot be read)."""
    cmd = [sys.executable, *step.command(args, done)]
    log_path = args.workdir / "logs" / f"{step.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n[scale] step {index + 1}/{len(STEPS)} {step.name}: {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    lines = []
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with PeakRSS(MEMORY_GROUPS, root=proc.pid, count_root=True) as memory:
            for line in proc.stdout:  # progress as it comes
                lines.append(line)
                log_file.write(line)
                if line.startswith("[") or "Error" in line or "failed" in line:
                    print("    " + line, end="", flush=True)
            proc.wait()
    wall = time.perf_counter() - started
    record = {"step": step.name, "status": "ok", "wall_s": round(wall, 1), "settings": settings_of(step, args),
              "peak_rss": {"total": memory.peak, "driver": memory.peaks["root"],
                           **{k: memory.peaks[k] for k in MEMORY_GROUPS}},
              "load_average": round(os.getloadavg()[0], 1), "log": str(log_path)}
    log = "".join(lines)
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"exit code {proc.returncode}")
        record.update(step.measure(args, done, log))
    except Exception as err:  # the job's failure or an unreadable result: either way the step failed
        tail = "".join(lines[-40:])
        return {**record, "status": "failed", "error": f"{err}\n{tail}"}
    record["disk_bytes"] = du(step.outputs(args.workdir))
    record["rows_per_s"] = rate(record.get("scale_rows"), wall)
    record["projected_100m_s"] = projection(wall, args.rows) if step.scales else None
    other = args.baseline_steps.get(step.name, {})
    same = {k: v for k, v in other.get("settings", {}).items() if k != "rows"} == \
        {k: v for k, v in record["settings"].items() if k != "rows"}
    if (step.scales and same and other.get("status") == "ok" and args.baseline_rows != args.rows
            and args.rows < TARGET_ROWS):
        record["projected_2pt_s"] = two_point(args.baseline_rows, other["wall_s"], args.rows, wall)
    return record


def settings_of(step: Step, args) -> dict:
    return {name: getattr(args, name) for name in step.settings}


def write_table(args, records: list[dict]) -> str:
    load = os.getloadavg()
    head = (f"bench/scale.py --rows {args.rows:,} on {os.cpu_count()} CPUs, Spark {args.master}, driver memory "
            f"{args.driver_memory}, eval sample {args.eval_sample}, {args.num_processes} training processes; "
            f"system load (1, 5, 15 min) now {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (each step's, at its end, in "
            "scale.json)")
    table = head + "\n\n" + markdown(records, args.rows) + "\n"
    (args.workdir / "scale.md").write_text(table)
    (args.workdir / "scale.json").write_text(json.dumps({"rows": args.rows, "steps": records}, indent=2) + "\n")
    return table


def run(args) -> int:
    work: Path = args.workdir
    if args.fresh and work.exists():
        shutil.rmtree(work)
    (work / "steps").mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    print(f"[scale] {args.rows:,} rows in {work} ({free / 1e9:,.0f} GB free there)", flush=True)
    records = {p.stem: json.loads(p.read_text()) for p in (work / "steps").glob("*.json")}
    settings = {step.name: settings_of(step, args) for step in STEPS}
    start = first_to_run(STEPS, records, settings, work, args.from_step)
    for step in STEPS[:start]:
        print(f"[scale] step {step.name}: done before ({records[step.name]['wall_s']:.0f} s), kept", flush=True)
    for step in STEPS[start:]:
        (work / "steps" / f"{step.name}.json").unlink(missing_ok=True)
        records.pop(step.name, None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYSPARK_SUBMIT_ARGS": f"--master {args.master} --driver-memory {args.driver_memory} pyspark-shell"}
    for index in range(start, len(STEPS)):
        step = STEPS[index]
        for path in step.outputs(work) if step.owns else []:
            shutil.rmtree(path, ignore_errors=True)
        record = run_step(index, step, args, records, env)
        (work / "steps" / f"{step.name}.json").write_text(json.dumps(record, indent=2) + "\n")
        records[step.name] = record
        table = write_table(args, [records[s.name] for s in STEPS if s.name in records])
        if record["status"] != "ok":
            print(f"\n[scale] step {index + 1} ({step.name}) FAILED after {record['wall_s']:.0f} s: "
                  f"{record['error']}\n\n{table}\nlog: {record['log']}; rerun the same command to resume from "
                  f"{step.name}", flush=True)
            return 1
        projected = record["projected_100m_s"]
        print(f"[scale] {step.name} done: {record['wall_s']:.1f} s, peak RSS {_gb(record['peak_rss']['total'])} GB, "
              f"disk {_mb(record['disk_bytes'])} MB, rows in {_num(record['rows_in'])}, out {_num(record['rows_out'])}"
              + (f", {_num(record['rows_per_s'])} rows/s" if record["rows_per_s"] else "")
              + (f"; at 100M rows (linear projection) {projected:,.0f} s" if projected else ""), flush=True)
    print("\n" + write_table(args, [records[s.name] for s in STEPS]), flush=True)
    if not args.keep:
        for path in (work / "raw", _data(work), work / "serve"):
            shutil.rmtree(path, ignore_errors=True)
        print(f"[scale] outputs deleted (--keep keeps them); records and table in {work}", flush=True)
    return 0


# ---------------------------------------------------------------- the serve step's own process

def serve_step(argv: list[str]) -> None:
    """Serve the trained model (and with --serve-items a synthetic one) through `mlflow models serve`; prints
    {"served": {"trained": figures, "synthetic": figures or None}} as its last line."""
    import mlflow
    import numpy as np
    from mlflow.models.model import MODEL_CONFIG

    from bench.serve import measure, post, register_synthetic, requests_for
    from twots.config import resolve
    from twots.data.snapshot import read_snapshot
    from twots.data.tables import ITEMS, USERS
    from twots.mlops.packaging import log_model
    from twots.mlops.pyfunc import ServeConfig
    from twots.mlops.registry import use_registry
    from twots.mlops.server import local_server
    from twots.mlops.tracking import use_tracking
    from twots.models.kinds import load_model
    from twots.spark import get_spark

    parser = argparse.ArgumentParser(prog="bench/scale.py serve-step")
    for flag in ("--data", "--model", "--version", "--out", "--scan"):
        parser.add_argument(flag, required=True)
    for flag in ("--serve-items", "--requests", "--history"):
        parser.add_argument(flag, type=int, required=True)
    args = parser.parse_args(argv)
    spark = get_spark("bench-scale-serve", conf={"spark.ui.enabled": "false"})
    tracking = f"sqlite:///{Path(args.data).resolve() / 'mlflow.db'}"
    client = use_registry(tracking, None, args.data)
    experiment = use_tracking(tracking, args.out, "bench-scale-serve")  # its artifacts under --out

    def served(uri: str, n_users: int, n_items: int, **ids) -> dict:
        started = time.perf_counter()
        with local_server(uri, tracking_uri=tracking, timeout_s=1800) as url:
            ready = time.perf_counter() - started
            bodies = requests_for(n_users, n_items, args.requests + 1, args.history, seed=0, **ids)
            first = post(f"{url}/invocations", bodies[0])[0] * 1000
            figures = measure(f"{url}/invocations", bodies[1:], clients=4)[0]
        print(f"[serve] {uri}: ready in {ready:.1f} s, first request {first:.0f} ms, "
              + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
        return {"uri": uri, "n_items": n_items, "scan": args.scan, "server_ready_s": round(ready, 1),
                "first_ms": first, "requests": 1 + 20 + 2 * args.requests, **figures}

    registered = f"models:/twots/{args.version}"
    logged = mlflow.models.Model.load(registered).flavors["python_function"].get(MODEL_CONFIG, {})
    uri = registered
    # Training logs the model with the config's index and scan (conf/default.yaml: auto, float32); this step measures
    # the scan (bench/serve.py --trained compares it with the index).
    if (logged.get("index"), logged.get("scan")) != ("scan", args.scan):
        print(f"[serve] {registered} serves by index {logged.get('index')}, scan {logged.get('scan')}: logging the "
              f"trained model with index scan, scan {args.scan} as twots-{args.scan}", flush=True)
        with mlflow.start_run(experiment_id=experiment):
            info = log_model(load_model(args.model), args.data, kind="2ts", spark=spark,
                             registered_model_name=f"twots-{args.scan}",
                             limits=resolve(ServeConfig, "serve", {"scan": args.scan, "index": "scan"}))
        uri = f"models:/twots-{args.scan}/{info.registered_model_version}"

    def raw_ids(table: str, key: str):
        found = read_snapshot(spark, args.data, table, (key, f"raw_{key}"))
        return found[f"raw_{key}"][np.argsort(found[key])]

    users, items = raw_ids(USERS, "user_id"), raw_ids(ITEMS, "item_id")
    result = {"trained": served(uri, len(users), len(items), user_id=users.__getitem__, item_id=items.__getitem__),
              "synthetic": None}
    if args.serve_items:
        n_users = 10_000
        synthetic = register_synthetic(spark, client, experiment, Path(args.out) / f"items-{args.serve_items}",
                                       n_users, args.serve_items, args.history, args.scan, "scan")
        result["synthetic"] = served(synthetic, n_users, args.serve_items)
    print(json.dumps({"served": result}), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["serve-step"]:
        serve_step(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=TARGET_ROWS, help="generated Taobao-format rows")
    parser.add_argument("--workdir", type=Path, help="outputs, records and table (default /tmp/twots-scale-<rows>)")
    parser.add_argument("--seed", type=int, default=7, help="the generator's seed")
    parser.add_argument("--eval-sample", type=float, default=0.01, help="fraction of users evaluated")
    parser.add_argument("--partitions", type=int, default=0, help="prepare's shuffle partitions (0: its config)")
    parser.add_argument("--num-processes", type=int, default=2, help="training processes")
    parser.add_argument("--full-ranking", action="store_true",
                        help="also rank 1000 users' test events against the whole catalogue")
    parser.add_argument("--scan", default="bfloat16", choices=("float32", "bfloat16", "int8"),
                        help="served model's scan")
    parser.add_argument("--serve-items", type=int, default=0,
                        help="also serve a random 2TS model over this many synthetic items (e.g. 4160000)")
    parser.add_argument("--requests", type=int, default=200, help="requests of the latency burst")
    parser.add_argument("--history", type=int, default=20, help="recent items per request")
    parser.add_argument("--master", default="local[2]", help="Spark master of every step")
    parser.add_argument("--driver-memory", default="8g", help="Spark driver memory of every step")
    parser.add_argument("--from-step", choices=[s.name for s in STEPS], help="rerun from this step on")
    parser.add_argument("--baseline", type=Path, help="scale.json of a run at another --rows: also project each "
                        "step to 100M rows through both runs (a fixed cost plus a cost per row)")
    parser.add_argument("--fresh", action="store_true", help="delete the workdir first")
    parser.add_argument("--keep", action="store_true", help="keep the outputs after a successful run")
    args = parser.parse_args()
    args.workdir = (args.workdir or Path(f"/tmp/twots-scale-{args.rows}")).resolve()
    baseline = json.loads(args.baseline.read_text()) if args.baseline else {"rows": None, "steps": []}
    args.baseline_rows, args.baseline_steps = baseline["rows"], {r["step"]: r for r in baseline["steps"]}
    sys.exit(run(args))


if __name__ == "__main__":
    main()
