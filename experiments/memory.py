"""Peak resident memory of a process tree, by group of processes, sampled in a background thread while open.

Used by the comparison's tuning (the training processes of each launch) and by bench/scale.py (each step's job:
its Python driver, the Spark JVM, the training ranks, the model server).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

RANKS = {"ranks": "torch.distributed.run"}


class PeakRSS:
    """Peak resident memory (bytes) of the processes below `root` (default: this process), by group.

    `groups` maps a name to a text of a command line: a process whose command line holds it counts, with all its
    descendants, in that group (the first group that matches, the nearest matching ancestor first). `root` itself
    and the processes of no group count in "root" when `count_root` is set. `peaks[name]` is each group's largest
    sum held over two samples in a row, `peak` the same for the sum of all groups. Two in a row, because a process
    that forks shows the parent's whole resident set once more in the child until it execs: one of three Spark
    runs of bench/prepare.py at 10M rows read 19.0 GB, about twice the others' 9.7 GB, most likely the JVM forking
    a helper command at that sample (not caught in the act).
    `cpu_s` is the CPU seconds (user + system) of every process seen, at its last sample. Local-mode training ranks
    are descendants (torchrun's); Spark-task ranks on a cluster are not, and are not seen.
    """

    def __init__(self, groups: Mapping[str, str] = RANKS, root: int | None = None, count_root: bool = False,
                 every_s: float = 0.2):
        import psutil

        self.root = psutil.Process(root)
        self.groups, self.count_root, self.every_s = dict(groups), count_root, every_s
        self.peaks = dict.fromkeys([*self.groups, *(["root"] if count_root else [])], 0)
        self.peak = 0
        self._last = dict.fromkeys(self.peaks, 0)
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def sample(self) -> dict[str, int]:
        """Resident bytes of each group now (and updates the peaks)."""
        import psutil

        now = dict.fromkeys(self.peaks, 0)
        todo = [(self.root, "root" if self.count_root else None)]
        while todo:
            proc, group = todo.pop()
            try:
                if proc is not self.root:
                    command = " ".join(proc.cmdline())
                    group = next((name for name, text in self.groups.items() if text in command), group)
                if group is not None:
                    now[group] += proc.memory_info().rss
                times = proc.cpu_times()
                self._cpu[proc.pid] = times.user + times.system
                todo += [(child, group) for child in proc.children()]
            except psutil.Error:
                pass  # the process ended between listing and reading it
        for name, rss in now.items():
            self.peaks[name] = max(self.peaks[name], min(rss, self._last[name]))
        self.peak = max(self.peak, min(sum(now.values()), sum(self._last.values())))
        self._last = now
        return now

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def _sample(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
