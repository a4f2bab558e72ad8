"""A real `mlflow models serve` on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager


@contextmanager
def local_server(model_uri: str, *, tracking_uri: str | None = None, workers: int = 1, timeout_s: float = 180):
    """Run `mlflow models serve -m model_uri --env-manager local` on 127.0.0.1 and a free port until the block
    ends; yields the base URL once /ping answers. Fails with the server's output if it exits or never answers.
    `tracking_uri` finds a models:/ or runs:/ URI; a model folder needs none."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The server execs `uvicorn` by name: this interpreter's bin folder must be on PATH.
    env = {**os.environ, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}),
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while not _answers(f"{url}/ping"):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                state = f"exited with {process.returncode}" if process.poll() is not None else \
                    f"did not answer /ping within {timeout_s:.0f} s"
                raise RuntimeError(f"mlflow models serve {state}:\n{log.read()[-5000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
