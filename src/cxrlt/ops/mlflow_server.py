"""``cxrlt mlflow up`` / ``down``: a real local ``mlflow server`` (SQLite backend, local or S3 artifacts).

One worker, job execution off (saves ~3 GB of helper processes), bound to 127.0.0.1 unless told otherwise, allowed
hosts configurable (MLflow 3 rejects unknown Host headers). Stopped by PID.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cxrlt.ops.procs import free_port, load_state, same_process, save_state, spawn, start_time, stop_group, wait_ready

STATE_DIR = Path(os.environ.get("CXRLT_STATE_DIR", Path.home() / ".cache" / "cxrlt" / "servers"))


def start(data_dir: str | Path, port: int = 5000, host: str = "127.0.0.1", artifacts: str | None = None,
          allowed_hosts: str | None = None, name: str = "mlflow", state_dir: Path = STATE_DIR,
          timeout: float = 120, auth_config: str | Path | None = None) -> dict:
    """Start the server; returns its state (``tracking_uri``, ``pid``...). ``port=0`` picks a free port.
    ``auth_config``: a basic_auth.ini; the server then runs MLflow's basic-auth app (accounts and permissions)."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    state_path = Path(state_dir) / name / "server.json"
    old = load_state(state_path)
    if old and same_process(old["pid"], old.get("start_time")):
        return old
    port = port or free_port(host)
    artifacts = artifacts or str(data_dir / "artifacts")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{data_dir / 'mlflow.db'}", "--artifacts-destination", artifacts]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    if auth_config:
        import secrets

        cmd += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(Path(auth_config).resolve()),
                   MLFLOW_FLASK_SERVER_SECRET_KEY=env.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(16))
    log = Path(state_dir) / name / "mlflow.log"
    proc = spawn(cmd, log, env, cwd=data_dir)
    state = {"pid": proc.pid, "start_time": start_time(proc.pid), "host": host, "port": port, "tracking_uri": f"http://{host}:{port}",
             "data_dir": str(data_dir), "artifacts": artifacts, "log": str(log)}
    save_state(state_path, state)
    try:
        wait_ready(proc, f"{state['tracking_uri']}/health", timeout, log, "mlflow server")
    except RuntimeError:
        state_path.unlink(missing_ok=True)
        raise
    return state


def stop(name: str = "mlflow", state_dir: Path = STATE_DIR) -> bool:
    state_path = Path(state_dir) / name / "server.json"
    state = load_state(state_path)
    if state is None:
        return False
    stop_group(state["pid"], started=state.get("start_time"))  # never a process that merely reuses the PID
    state_path.unlink(missing_ok=True)
    return True
