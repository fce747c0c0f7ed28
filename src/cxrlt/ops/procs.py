"""Background processes: servers started and stopped by PID (MLflow, S3), state files, readiness polling, clean stop,
and idle CPU priority for work that should only use spare cycles."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from cxrlt.errors import OperationError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None when it is gone.

    A PID and its start time together identify one process: a PID reused later by another process has another
    start time, so servers are recorded with both and never signalled on the PID alone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])  # fields after "(comm)": state is field 3


def same_process(pid: int, started: int | None) -> bool:
    """Is ``pid`` still the process that was recorded with start time ``started``?"""
    if not alive(pid):
        return False
    return started is None or start_time(pid) == started


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def tail(path: str | Path, n: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def spawn(cmd: list[str], log_file: Path, env: dict | None = None, cwd: str | Path | None = None) -> subprocess.Popen:
    """Start in its own session (so the whole process group can be stopped), output to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def idle_priority() -> None:
    """Make the calling process (and what it starts) take only CPU time nobody else wants: ``SCHED_IDLE`` where
    Linux offers it, else the lowest nice level. Run in the child before ``exec`` (``preexec_fn``)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float, log_file: Path, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise OperationError(f"{what} exited with code {proc.returncode}:\n{tail(log_file)}")
        if http_ok(url):
            return
        time.sleep(0.3)
    stop_group(proc.pid)
    raise OperationError(f"{what} not ready after {timeout:.0f} s:\n{tail(log_file)}")


def stop_group(pid: int, timeout: float = 20.0, started: int | None = None) -> bool:
    """SIGTERM the process group, SIGKILL after ``timeout``. With ``started`` (the recorded start time), a PID
    now held by another process is left alone and False is returned."""
    if started is not None and not same_process(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))


def load_state(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
