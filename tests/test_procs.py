"""Servers are recorded by PID *and* start time: stop never signals a process that merely reuses a recorded PID."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cxrlt.ops import mlflow_server
from cxrlt.ops.procs import alive, same_process, start_time, stop_group
from serving import server


@pytest.fixture
def bystander():
    """An unrelated long-running process (its own session) standing in for whoever got the PID later."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_start_time_identifies_a_process(bystander):
    started = start_time(bystander.pid)
    assert started is not None and same_process(bystander.pid, started)
    assert not same_process(bystander.pid, started + 1)
    assert stop_group(bystander.pid, timeout=1, started=started + 1) is False and alive(bystander.pid)


def test_server_down_leaves_a_reused_pid_alone(bystander, tmp_path):
    state = tmp_path / "demo"
    state.mkdir()
    recorded = server.ServerHandle("demo", bystander.pid, "127.0.0.1", 1, 2, 3, str(tmp_path), str(tmp_path / "l"),
                                   start_time(bystander.pid) - 1)  # the server that had this PID started earlier
    (state / "server.json").write_text(json.dumps(recorded.__dict__))
    assert server.stop("demo", timeout=1, state_dir=tmp_path)
    time.sleep(0.2)
    assert alive(bystander.pid) and not (state / "server.json").exists()


def test_mlflow_down_leaves_a_reused_pid_alone(bystander, tmp_path):
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "server.json").write_text(json.dumps(
        {"pid": bystander.pid, "start_time": start_time(bystander.pid) - 1, "tracking_uri": "http://127.0.0.1:1"}))
    assert mlflow_server.stop(state_dir=tmp_path)
    time.sleep(0.2)
    assert alive(bystander.pid)


def test_the_recorded_process_itself_is_stopped(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    assert stop_group(proc.pid, timeout=5, started=start_time(proc.pid)) is True
    proc.wait(timeout=10)
    assert not alive(proc.pid)
