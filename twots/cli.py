"""What a job prints: its own lines, real warnings, and a failure the user can fix as one line.

`run_job(main)` runs a job's main function. A `UserError` (a missing or unprepared folder, an unknown MLflow run,
an unreadable or empty input, no registered model, ...) ends it with `error: <what> (<where>): <what to do>` on
stderr and exit status 2; any other exception keeps its traceback. Configuration errors exit 2 too, before this
(twots.config.load).

`quiet()`, which every job runs unless given `--verbose`, silences the third-party output known to be harmless:
each warning by its category and the module that issues it (`HARMLESS_WARNINGS`), each log line by its logger and
the start of its message (`HARMLESS_LOGS`). The warning filters also go into PYTHONWARNINGS, so the processes a job
starts (torchrun's training ranks) have them before their first import.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass


class UserError(Exception):
    """An expected failure the user can fix: what is wrong, where (a path, a run id, a flag) and what to do.
    Each part is kept on one line (a multi-line cause, such as Spark's, is joined)."""

    def __init__(self, what: str, where: str, todo: str):
        self.what, self.where, self.todo = (re.sub(r"\s*\n\s*", " ", str(part).strip()) for part in (what, where, todo))
        super().__init__(f"{self.what} ({self.where}): {self.todo}")


def run_job(main: Callable[[], object]) -> None:
    """`main()`, with a UserError printed as one line on stderr and exit status 2."""
    try:
        main()
    except UserError as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


@dataclass(frozen=True)
class Harmless:
    """A warning of `category` issued by the module `module` (its exact name), whose message starts with `message`
    (any message when empty). No ':' or ',' in `message`: PYTHONWARNINGS separates fields and entries with them."""

    category: type[Warning]
    module: str
    message: str = ""

    def option(self) -> str:
        """The filter as a -W option (PYTHONWARNINGS entry); `ignore_it` installs the same filter."""
        return f"ignore:{self.message}:{self.category.__name__}:{self.module}"

    def ignore_it(self) -> None:
        # What Python makes of option(): the message matches at the start, the module exactly.
        warnings.filterwarnings("ignore", re.escape(self.message), self.category, re.escape(self.module) + r"\Z")


HARMLESS_WARNINGS = (
    # petastorm 0.13 is written against pyarrow's legacy dataset API, which pyarrow 14 deprecates at each use.
    *(Harmless(FutureWarning, f"petastorm.{module}") for module in (
        "spark.spark_dataset_converter", "fs_utils", "reader", "arrow_reader_worker", "etl.dataset_metadata",
        "unischema")),
    # twots.training.loaders passes shard_seed on purpose: seed orders the row groups, shard_seed splits them.
    Harmless(UserWarning, "petastorm.reader", "shard_seed was deprecated"),
    # petastorm's shuffling buffer copies these arrays into its own tensors before a batch is formed.
    Harmless(UserWarning, "petastorm.pytorch", "The given NumPy array is not writable"),
)

HARMLESS_LOGS = {
    # The training tables have no floating-point columns; their file count is chosen for the ranks' shards.
    "petastorm.spark.spark_dataset_converter": ("Converting floating-point columns", "The median size"),
    # The [stage1]/[stage2] lines say as much.
    "TorchDistributor": ("Started local training", "Finished local training"),
    "mlflow.store.db.utils": ("Creating initial MLflow database tables", "Updating database tables"),
    # The pickled object is a RecommenderPyfunc, which holds no state; its code is logged beside it. The input
    # example is checked against the signature, as every time (a failure is a warning, kept).
    "mlflow.pyfunc": ("Passing a Python object as `python_model`", "Validating input example against model signature"),
}


class _DropStartingWith(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet() -> None:
    """Silence HARMLESS_WARNINGS in this process and the ones it starts, and HARMLESS_LOGS; idempotent."""
    for harmless in HARMLESS_WARNINGS:
        harmless.ignore_it()
    options = [h.option() for h in HARMLESS_WARNINGS]
    given = [o for o in os.environ.get("PYTHONWARNINGS", "").split(",") if o]
    os.environ["PYTHONWARNINGS"] = ",".join(given + [o for o in options if o not in given])
    for name, prefixes in HARMLESS_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropStartingWith) for f in logger.filters):
            logger.addFilter(_DropStartingWith(prefixes))
