"""bench/scale.py's bookkeeping: which step a rerun resumes from, the projections to 100M rows, the table, and the
memory sampler's groups (experiments.memory.PeakRSS) on real child processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_bench

from experiments.memory import PeakRSS

scale = load_bench("scale")


def finished(tmp_path: Path, settings: dict) -> tuple[dict, dict]:
    """Records of every step finished with `settings`, and every step's outputs on disk."""
    for step in scale.STEPS:
        for path in step.outputs(tmp_path):
            path.mkdir(parents=True, exist_ok=True)
    records = {s.name: {"status": "ok", "settings": settings[s.name]} for s in scale.STEPS}
    return records, settings


def settings_for(**values) -> dict:
    return {s.name: {k: values.get(k, 1) for k in s.settings} for s in scale.STEPS}


def test_resume_starts_at_the_first_unfinished_step(tmp_path):
    names = [s.name for s in scale.STEPS]
    records, settings = finished(tmp_path, settings_for())
    assert scale.first_to_run(scale.STEPS, records, settings, tmp_path) == len(names)
    del records["evaluate"]
    assert scale.first_to_run(scale.STEPS, records, settings, tmp_path) == names.index("evaluate")
    records["prepare"]["status"] = "failed"
    assert scale.first_to_run(scale.STEPS, records, settings, tmp_path) == names.index("prepare")


def test_resume_reruns_a_step_whose_settings_or_outputs_changed(tmp_path):
    names = [s.name for s in scale.STEPS]
    records, settings = finished(tmp_path, settings_for())
    changed = settings_for(num_processes=4)
    assert scale.first_to_run(scale.STEPS, records, changed, tmp_path) == names.index("train")
    (tmp_path / "serve").rmdir()
    assert scale.first_to_run(scale.STEPS, records, settings, tmp_path) == names.index("serve")
    assert scale.first_to_run(scale.STEPS, records, settings, tmp_path, from_step="register") == \
        names.index("register")
    with pytest.raises(ValueError, match="--from-step 'deploy'"):
        scale.first_to_run(scale.STEPS, records, settings, tmp_path, from_step="deploy")


def test_projections():
    assert scale.projection(90.0, 200_000) == pytest.approx(45_000.0)
    assert scale.projection(90.0, 100_000_000) is None
    # 60 s at 200k rows and 100 s at 1M: 50 s fixed + 50 us a row -> 5,050 s at 100M
    assert scale.two_point(200_000, 60.0, 1_000_000, 100.0) == pytest.approx(5_050.0)
    assert scale.two_point(1_000_000, 100.0, 200_000, 60.0) == pytest.approx(5_050.0)
    assert scale.two_point(200_000, 60.0, 1_000_000, 55.0) is None  # no per-row cost measured: no projection
    assert scale.rate(200_000, 4.0) == 50_000
    assert scale.rate(None, 4.0) is None


def test_table_has_a_line_per_record_with_its_figures():
    records = [{"step": "prepare", "status": "ok", "wall_s": 120.0, "peak_rss": {"total": 3e9, "driver": 2e8,
                "jvm": 2.8e9, "ranks": 0, "server": 0}, "disk_bytes": 5e7, "rows_in": 1_000_000,
                "rows_out": 999_000, "rows_per_s": 8333.3, "projected_100m_s": 12_000.0, "projected_2pt_s": 9_000.0},
               {"step": "train", "status": "failed", "wall_s": 3.5}]
    table = scale.markdown(records, 1_000_000).splitlines()
    assert len(table) == 4
    prepare = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert prepare[:6] == ["prepare", "ok", "120.0", "3.00", "0.20", "2.80"]
    assert prepare[9] == "50.0"  # MB
    assert "1,000,000" in prepare and "999,000" in prepare and "8,333" in prepare
    assert "12,000 s (3.3 h)" in prepare and "9,000 s (2.5 h)" in prepare
    assert table[3].startswith("| train | failed | 3.5 |")


def hold_memory(size: int, marker: str) -> subprocess.Popen:
    """A child process holding `size` bytes; returns once they are allocated and touched."""
    code = f"import sys, time; b = bytearray({size}); print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def test_peak_rss_counts_each_child_in_its_group():
    big, small = hold_memory(300 << 20, "marker-big"), hold_memory(1 << 20, "marker-small")
    try:
        memory = PeakRSS({"big": "marker-big", "small": "marker-small"}, count_root=True)
        assert memory.sample()["big"] > 300 << 20
        assert memory.peaks["big"] == 0  # seen once: not yet a peak
        memory.sample()
        assert memory.peaks["big"] > 300 << 20 > memory.peaks["small"] > 0
        assert memory.peaks["root"] > 0
        assert memory.peak >= memory.peaks["big"] + memory.peaks["small"]
        assert memory.cpu_s > 0
    finally:
        for child in (big, small):
            child.kill()
            child.wait()


def test_peak_rss_ignores_a_process_seen_in_one_sample_only():
    """What a forked child looks like before it execs: there for one sample, then gone."""
    memory = PeakRSS({"child": "marker-brief"})
    memory.sample()
    child = hold_memory(200 << 20, "marker-brief")
    try:
        assert memory.sample()["child"] > 200 << 20
    finally:
        child.kill()
        child.wait()
    memory.sample()
    assert memory.peaks["child"] == 0 and memory.peak == 0
