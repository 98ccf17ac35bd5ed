"""Processes the tests start, and the check that none outlives the test run.

Every test that starts a server or an engine as a process starts it through the ``processes`` fixture
(tests/conftest.py), whose finaliser stops it and everything it started, whatever the test's outcome.
Registered as a pytest plugin, :func:`pytest_sessionfinish` fails the run when any process the run
started is still alive at its end, naming it, and ends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil
import pytest

# The Python runtime's own helpers, started on first use of multiprocessing; they end with this process.
RUNTIME_HELPERS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "multiprocessing.semaphore_tracker",
)
GRACE_S = 60


def stop_tree(process: subprocess.Popen | psutil.Process, grace_s: float = GRACE_S) -> None:
    """SIGTERM a process and its descendants (a server drains first), then SIGKILL what is left after ``grace_s``."""
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):  # already gone
            member.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):  # already gone
            member.kill()
    psutil.wait_procs(alive, timeout=10)
    if isinstance(process, subprocess.Popen):
        process.poll()  # reap it


class Processes:
    """Starts processes for one test and stops every one of them (with its children) at the test's end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], **popen) -> subprocess.Popen:
        process = subprocess.Popen(command, **popen)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                stop_tree(process)


def leftover_processes() -> list[psutil.Process]:
    """Descendants of this test run still alive, after giving those shutting down a few seconds."""
    children = [
        child
        for child in psutil.Process(os.getpid()).children(recursive=True)
        if not any(helper in " ".join(_cmdline(child)) for helper in RUNTIME_HELPERS)
    ]
    _, alive = psutil.wait_procs(children, timeout=15)
    return [process for process in alive if process.is_running() and process.status() != psutil.STATUS_ZOMBIE]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process it started is still alive, and end that process."""
    leftover = leftover_processes()
    if not leftover:
        return
    lines = [f"  pid {p.pid}: {' '.join(_cmdline(p))[:200]}" for p in leftover]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "processes started by the test run are still alive at its end (now killed):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True, bold=True)
    else:
        print(message)
    for process in leftover:
        stop_tree(process, grace_s=5)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
