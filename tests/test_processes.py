"""The test run's process hygiene: a process a test starts through the ``processes`` fixture is stopped
whatever the test's outcome, and a run that leaves one behind fails, naming it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess:
    """A separate pytest run of one test file with this suite's conftest (its fixtures and its end-of-run check)."""
    (tmp_path / "test_inner.py").write_text(test_source)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), "--confcutdir", str(tmp_path), str(tmp_path / "test_inner.py")]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def pid_in(tmp_path: Path) -> int:
    return int((tmp_path / "pid").read_text())


def test_a_run_that_leaves_a_process_behind_fails_and_names_it(tmp_path):
    done = run_pytest(
        tmp_path,
        f"""
import subprocess
from pathlib import Path

def test_starts_and_forgets():
    process = subprocess.Popen(["sleep", "300"])
    Path({str(tmp_path)!r}, "pid").write_text(str(process.pid))
""",
    )
    assert done.returncode != 0, done.stdout
    assert "1 passed" in done.stdout and "still alive" in done.stdout and "sleep 300" in done.stdout, done.stdout
    time.sleep(0.5)
    assert not psutil.pid_exists(pid_in(tmp_path)) or psutil.Process(pid_in(tmp_path)).status() == psutil.STATUS_ZOMBIE


def test_the_processes_fixture_stops_its_processes_and_their_children_when_a_test_fails(tmp_path):
    done = run_pytest(
        tmp_path,
        f"""
from pathlib import Path

def test_starts_then_fails(processes):
    process = processes.start(["sh", "-c", "sleep 300 & echo $! > {tmp_path}/pid; wait"])
    while not Path({str(tmp_path)!r}, "pid").exists():
        pass
    assert False, "the test fails with its server still running"
""",
    )
    assert done.returncode == 1 and "1 failed" in done.stdout, done.stdout
    assert "still alive" not in done.stdout, done.stdout
    assert not psutil.pid_exists(pid_in(tmp_path)) or psutil.Process(pid_in(tmp_path)).status() == psutil.STATUS_ZOMBIE
