"""The commands the README, docs/, jobs and benches print work as printed, in a fresh shell: no venv on PATH.

Every command is checked statically (its program exists, its job parses its flags); the README's (prepare, train,
register, validate, promote, serve: all but evaluate) and the one the demo prints (serve) also run, in that order, on
the first 250 users of ml-latest-small (the raw copy of conftest.small_movielens), each in a subprocess with a clean
environment (`env -i HOME PATH=/usr/bin:/bin`) but validate, which runs in this process with the README's flags (a
process of its own is half a minute of JVM start for a replay of seconds; its start-up is the same as register's and
promote's, which run as processes). Evaluate is only checked statically here (tests/test_train.py runs the job on a
logged run and compares its replay with training's); the others run to the end, and serve until /ping and a request
answer. What each job prints is held to the targets of a quiet run (README, "Output and errors"): at most 25 lines
for prepare and 30 for train, no traceback, no Python warning, no Spark INFO line, no Ivy report.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TEST_JVM_OPTIONS, run_job_here, stop_process_group
from test_bundle import job_config

from twots.config import parser_for, resolve
from twots.mlops.registry import RegistryConfig, serve_command
from twots.mlops.server import _answers
from twots.setup_env import write_spark_conf

REPO = Path(__file__).resolve().parent.parent
# What a new user's shell has. SPARK_CONF_DIR holds what `make setup` writes into the venv's pyspark/conf (the venv
# this test runs from may have been set up before the log4j2 settings existed), and the tests' JVM options.
CLEAN_ENV = {"HOME": os.environ["HOME"], "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
# A command: optional VAR=value words, then one of these programs (the first five need an activated venv).
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(python3?|spark-submit|mlflow|pytest|\.venv/|bin/|make|curl|bench/|docker"
                     r"|databricks)\b")
NOT_IN_A_FRESH_SHELL = ("python", "python3", "spark-submit", "mlflow", "pytest", ".venv/")


def fenced_commands(text: str) -> list[str]:
    """Command lines of the ``` blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if COMMAND.match(line):
                commands.append(line)
    return commands


def inline_commands(text: str) -> list[str]:
    """`...` spans that are commands."""
    return [c for c in re.findall(r"`([^`\n]+)`", text) if COMMAND.match(c) and " " in c]


def docstring_commands(path: Path) -> list[str]:
    """The indented command lines of a module's docstring (what its --help prints)."""
    text = (ast.get_docstring(ast.parse(path.read_text()), clean=False) or "").replace("\\\n", " ")
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines() if line.startswith("    ")]
    return [line for line in lines if COMMAND.match(line)]


def every_printed_command() -> list[tuple[str, str]]:
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        found += [(doc.name, c) for c in fenced_commands(text) + inline_commands(text)]
    for script in sorted([*REPO.glob("jobs/*.py"), *REPO.glob("bench/*.py"), *REPO.glob("twots/**/*.py")]):
        found += [(script.name, c) for c in docstring_commands(script)]
    return found


def program_and_args(command: str) -> list[str]:
    """The command's words without leading VAR=value, placeholders given a value, [--optional flags] kept."""
    command = re.sub(r"\[(--[^\]]+)\]", r"\1", re.sub(r"<[^>]+>", "PLACEHOLDER-", command))
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)
    return words


def test_every_printed_command_runs_from_a_fresh_shell():
    """No command relies on an activated venv; each job's flags parse with its own parser; targets exist."""
    commands = every_printed_command()
    assert len(commands) > 25, commands
    targets = set(re.findall(r"(?m)^([\w-]+):", (REPO / "Makefile").read_text()))
    for where, command in commands:
        words = program_and_args(command)
        assert COMMAND.match(command).group(1) not in NOT_IN_A_FRESH_SHELL, f"{where}: `{command}` needs a venv"
        if words[0] == "make":
            assert words[1] in targets, f"{where}: `{command}`: no target {words[1]}"
        if words[0].startswith("bin/"):
            assert (REPO / words[0]).exists() and os.access(REPO / words[0], os.X_OK), f"{where}: {words[0]}"
        if words[0] in ("bin/spark-submit", "bin/python") and re.fullmatch(r"[\w/]+\.py", words[1]):
            script = REPO / words[1]
            assert script.is_file(), f"{where}: `{command}`: no {words[1]}"
            if script.parent.name == "jobs":
                model, section = job_config(script)
                args = parser_for(model, section).parse_args(words[2:])  # an unknown flag exits here
                resolve(model, section, vars(args))  # a value of the wrong type raises ConfigError


# ---- the README's commands and the demo's, run ------------------------------------------------------------------

def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Running the jobs"):]
    return fenced_commands(section[:section.index("```\n\n")] + "```")


class Shell:
    """Runs printed commands the way a new user's shell would, from the repository root."""

    def __init__(self, tmp: Path, substitutions: dict[str, str]):
        self.substitutions = substitutions
        conf = tmp / "spark-conf"
        write_spark_conf(conf)
        with (conf / "spark-defaults.conf").open("a") as defaults:
            defaults.write(f"spark.driver.extraJavaOptions {TEST_JVM_OPTIONS}\n")
        self.env = {**CLEAN_ENV, "SPARK_CONF_DIR": str(conf)}

    def expand(self, command: str) -> str:
        for placeholder, value in self.substitutions.items():
            command = command.replace(placeholder, value)
        return command

    def start(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(["/bin/sh", "-c", self.expand(command)], cwd=REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def run(self, command: str, timeout: float = 600) -> str:
        process = self.start(command)
        try:
            out, _ = process.communicate(timeout=timeout)
        finally:
            stop_process_group(process)
        assert process.returncode == 0, f"`{self.expand(command)}` exited {process.returncode}:\n{out[-5000:]}"
        return out


def published(output: str, key: str):
    """The value a job handed on (twots.mlops.registry.publish: a JSON line on stdout)."""
    lines = [json.loads(line)[key] for line in output.splitlines() if line.startswith(f'{{"{key}": ')]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def spark_info_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.match(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO ", line)]


def assert_quiet(output: str, most: int) -> None:
    """At most `most` lines; no traceback, Python warning (`file:line: SomeWarning: ...`), Spark INFO line or Ivy
    resolution report among them."""
    lines = output.splitlines()
    warned = [line for line in lines if re.match(r"^\S+:\d+: \w*Warning: ", line)]
    assert len(lines) <= most, f"{len(lines)} lines, more than {most}:\n{output}"
    assert "Traceback" not in output and not warned and spark_info_lines(output) == [], output
    assert ":: resolution report ::" not in output, output


@pytest.mark.slow
@pytest.mark.timeout(2400)  # five JVM starts, a training run and a replay: a loaded box takes many times longer
def test_readme_and_demo_commands_work_as_printed(small_movielens, tmp_path, capsys, monkeypatch):
    commands = readme_commands()
    programs = [" ".join(program_and_args(c)[:2]) for c in commands]
    assert programs == ["bin/spark-submit jobs/prepare.py", "bin/spark-submit jobs/train.py",
                        "bin/spark-submit jobs/evaluate.py", "bin/python jobs/register.py",
                        "bin/python jobs/validate.py", "bin/python jobs/promote.py", "bin/mlflow models"]
    prepare, train, evaluate, register, validate, promote, serve = commands
    data = tmp_path / "twots"
    shell = Shell(tmp_path, {"/data/twots": str(data),
                             "../shared/data/ml-latest-small": str(small_movielens.parent / "raw")})

    output = shell.run(prepare)
    assert "[config] prepare: conf/default.yaml, conf/movielens.yaml + flags" in output, output
    assert "[prepare] input rows 37448: accepted 37447, rejected 1 {'header': 1}" in output, output
    assert_quiet(output, 25)

    output = shell.run(train)
    run_id = re.search(r"^run ([0-9a-f]{32}): model ", output, re.MULTILINE).group(1)
    assert "[config] train: conf/default.yaml + flags --data --model --num-processes" in output
    assert re.search(r"^test: MRR 0\.\d{4}", output, re.MULTILINE), output
    assert_quiet(output, 30)
    shell.substitutions["<mlflow run id>"] = run_id

    output = shell.run(register)
    assert published(output, "model_version") == "1"
    assert_quiet(output, 6)
    capsys.readouterr()
    run_job_here(monkeypatch, "validate", *shlex.split(shell.expand(validate))[2:])
    assert published(capsys.readouterr().out, "validation_passed") is True
    output = shell.run(promote)
    assert published(output, "champion_version") == "1"
    assert_quiet(output, 4)

    # serve: the README's line is what the demo prints for these tables; it answers /ping and a request. On a free
    # port: this box may be serving 5001 already.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shell.substitutions["-p 5001"] = f"-p {port}"
    assert shell.expand(serve) == serve_command(resolve(RegistryConfig, "registry", {"data": str(data)}), port)
    process = shell.start(serve)
    try:
        deadline = time.monotonic() + 240
        while not _answers(f"http://127.0.0.1:{port}/ping"):
            assert process.poll() is None, process.stdout.read()[-5000:]
            assert time.monotonic() < deadline, "no /ping answer within 240 s"
            time.sleep(1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(
            {"dataframe_records": [{"recent_items": [], "k": 3}]}).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert len(json.loads(response.read())["predictions"][0]["items"]) == 3
    finally:
        stop_process_group(process)


@pytest.mark.parametrize("argv, message", [
    (["jobs/train.py", "--data", "/nonexistent"],
     "error: no such folder (/nonexistent): run jobs/prepare.py with --output /nonexistent first"),
    (["jobs/train.py", "--data", "x", "--stage2.batch-size", "-16"],
     "train.stage2.batch_size = '-16' (from command line): Input should be greater than or equal to 1"),
    (["jobs/compare.py", "--data", "x", "--overrides", "{ccf: {lrs: [0.003]}"], ("--overrides '{ccf: {lrs: [0.003]}': "
                                                                                "not YAML flow style")),
])
def test_bad_flags_fail_before_spark_starts(tmp_path, argv, message):
    """Through bin/spark-submit in a clean shell: a bad flag or a missing folder exits 2 with its message, without
    a traceback, and no Spark session was started."""
    shell = Shell(tmp_path, {})
    process = shell.start("bin/spark-submit " + shlex.join(argv))
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 2, out
    assert message in out and "SparkContext" not in out and "Traceback" not in out, out
