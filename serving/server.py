"""``cxrlt serve up`` / ``down``: the real ``tritonserver`` from the nvidia-pytriton wheel, no Docker.

The python-backend models run in a separate serving environment (numpy < 2: the bundled python backend returns empty
tensors with numpy 2; onnxruntime, OpenCV, pydicom), created on first use. The server binds 127.0.0.1 by default,
loads models explicitly, and is stopped by PID: traffic first (the entry model is unloaded so new requests are
refused while in-flight ones finish), then SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cxrlt.errors import CxrltError
from cxrlt.ops.procs import free_port, same_process, spawn, start_time, stop_group, wait_ready
from serving.front_door import (
    ADMIN_GRPC_HEADER,
    ADMIN_HEADER,
    Ports,
    TLSFiles,
    nginx_command,
    nginx_config,
    write_config,
)

__all__ = ["ADMIN_GRPC_HEADER", "ADMIN_HEADER", "ServerHandle", "ServerTLS", "start", "stop"]


def dicom_requirements() -> tuple[str, ...]:
    """The ``dicom`` extra of the installed cxrlt: the one list of DICOM decoding packages (pyproject.toml)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in requires("cxrlt") or []]
    found = tuple(str(r).split(";")[0].strip() for r in reqs if r.marker and r.marker.evaluate({"extra": "dicom"}))
    if not found:
        raise RuntimeError("the installed cxrlt has no 'dicom' extra: reinstall it (make setup)")
    return found


SERVE_ENV_FILE = Path(__file__).with_name("serve-env.txt")
SERVE_ENV_PACKAGES = (*(line.strip() for line in SERVE_ENV_FILE.read_text().splitlines()
                        if line.strip() and not line.startswith("#")), *dicom_requirements())
DEFAULT_ENV = Path(os.environ.get("CXRLT_SERVE_ENV", Path.home() / ".cache" / "cxrlt" / "serve-env"))
STATE_DIR = Path(os.environ.get("CXRLT_STATE_DIR", Path.home() / ".cache" / "cxrlt" / "servers"))
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


class ServeError(CxrltError, RuntimeError):
    """The server could not be started or stopped; the message carries the relevant log lines."""


@dataclass
class ServerHandle:
    name: str
    pid: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: str
    log_file: str
    start_time: int | None = None  # with pid, identifies the process: a reused PID is never signalled
    production: bool = False  # model control mode none, behind the front door (serving/front_door.py)
    tls: bool = False
    admin_key: str | None = None  # the front door's admin header value (production only)
    front_pid: int | None = None  # the front door (nginx) of a production server; pid/ports above are its ports
    front_start_time: int | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


def ensure_serving_env(env: Path = DEFAULT_ENV, python: str = sys.executable) -> Path:
    """Create the python-backend environment once (a marker file records the package set)."""
    env = Path(env)
    marker = env / ".cxrlt-serve-env.json"
    if marker.exists() and json.loads(marker.read_text()).get("packages") == list(SERVE_ENV_PACKAGES):
        return env
    print(f"creating the Triton serving environment in {env} (first use; about a minute) ...", flush=True)
    subprocess.run([python, "-m", "venv", "--clear", str(env)], check=True)
    lock = Path(__file__).resolve().parents[1] / "requirements" / "serve-lock.txt"  # a checkout's pins, when there
    pins = ["-c", str(lock)] if lock.exists() else []
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", *pins, *SERVE_ENV_PACKAGES],
                   check=True)
    marker.write_text(json.dumps({"packages": list(SERVE_ENV_PACKAGES)}))
    return env


def _tritonserver_dir(env: Path) -> Path:
    found = sorted(env.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not found:
        raise ServeError(f"no tritonserver in {env}; delete it and retry (cxrlt serve up recreates it)")
    return found[0]


def _backend_dir(env: Path, state: Path) -> Path:
    """A backend directory we own, with symlinks (copies break the RPATHs to the bundled CUDA runtime)."""
    ts = _tritonserver_dir(env)
    backend = state / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    links = {"libtriton_python.so": ts / "backends" / "python" / "libtriton_python.so",
             "triton_python_backend_utils.py": ts / "backends" / "python" / "triton_python_backend_utils.py",
             "triton_python_backend_stub": ts / "python_backend_stubs" / PY / "triton_python_backend_stub"}
    for name, target in links.items():
        link = backend / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        if name.endswith("stub") or name.endswith(".so"):
            target.chmod(target.stat().st_mode | 0o111)
    (ts / "bin" / "tritonserver").chmod(0o755)
    return backend.parent


@dataclass(frozen=True)
class ServerTLS(TLSFiles):
    """gRPC TLS for the server (Triton's own in development, the front door's in production)."""

    def args(self) -> list[str]:
        for path in (self.cert, self.key, self.ca):
            if path and not Path(path).is_file():
                raise ServeError(f"TLS file not found: {path}")
        out = ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(self.cert).resolve()}",
               f"--grpc-server-key={Path(self.key).resolve()}"]
        if self.ca:
            out += [f"--grpc-root-cert={Path(self.ca).resolve()}", "--grpc-use-ssl-mutual=true"]
        return out


#: The python backend moves tensors through one shared-memory region per model instance (default 1 MiB, grown 1 MiB
#: at a time). Batched images and trunk features need more, and each growth stalls every model of the server:
#: start with 32 MiB per region (tmpfs pages are only used once written) and grow 16 MiB at a time.
PYTHON_BACKEND_SHM = ("--backend-config=python,shm-default-byte-size=33554432",
                      "--backend-config=python,shm-growth-byte-size=16777216")


def start(repository: str | Path, name: str = "default", host: str = "127.0.0.1", http_port: int = 0,
          grpc_port: int = 0, metrics_port: int = 0, env: Path = DEFAULT_ENV, timeout: float = 240,
          state_dir: Path = STATE_DIR, production: bool = False, tls: ServerTLS | None = None) -> ServerHandle:
    """Start tritonserver on ``repository`` and wait until ready; ports 0 pick free loopback ports.

    ``production`` serves a fixed repository (model control mode ``none``: no client can load or unload a model)
    from a tritonserver on 127.0.0.1 behind the front door (serving/front_door.py), which listens on ``host`` and
    the given ports, ends TLS, and answers the admin APIs only to requests with the admin header. The key is
    generated here and kept in the server's state file and the front door's configuration, both readable by their
    owner only, never on a command line. Otherwise explicit mode, for local development; ``tls`` encrypts gRPC
    (optionally mutual)."""
    env = ensure_serving_env(env)
    state = Path(state_dir) / name
    state.mkdir(parents=True, exist_ok=True)
    if (state / "server.json").exists():
        old = ServerHandle(**json.loads((state / "server.json").read_text()))
        if same_process(old.pid, old.start_time):
            raise ServeError(f"server {name!r} already runs (pid {old.pid}, gRPC {old.grpc_url}); cxrlt serve down")
    ports = [p or free_port(host) for p in (http_port, grpc_port, metrics_port)]
    tls_args = tls.args() if tls else []  # refuses missing files before anything starts
    if production:  # Triton on loopback only; the front door takes the public ports
        triton = Ports("127.0.0.1", free_port(), free_port(), free_port())
        mode = ["--model-control-mode=none"]
    else:
        triton = Ports(host, *ports)
        mode = ["--model-control-mode=explicit", "--load-model=*", *tls_args]
    log_file = state / "tritonserver.log"
    cmd = [str(_tritonserver_dir(env) / "bin" / "tritonserver"), f"--model-repository={Path(repository).resolve()}",
           f"--backend-directory={_backend_dir(env, state)}", *mode,
           f"--http-address={triton.host}", f"--grpc-address={triton.host}", f"--metrics-address={triton.host}",
           f"--http-port={triton.http}", f"--grpc-port={triton.grpc}", f"--metrics-port={triton.metrics}",
           "--exit-timeout-secs=20", "--log-verbose=0", *PYTHON_BACKEND_SHM]
    run_env = {**os.environ, "PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = spawn(cmd, log_file, run_env)
    handle = ServerHandle(name, proc.pid, host, *ports, str(Path(repository).resolve()), str(log_file),
                          start_time(proc.pid), production, tls is not None)
    state_file = state / "server.json"
    state_file.touch(mode=0o600)
    state_file.chmod(0o600)  # the admin key
    state_file.write_text(json.dumps(asdict(handle), indent=2))
    try:
        wait_ready(proc, f"http://{triton.host}:{triton.http}/v2/health/ready", timeout, log_file, "tritonserver")
        if production:
            handle = _start_front_door(handle, state, triton, tls)
            state_file.write_text(json.dumps(asdict(handle), indent=2))
    except (RuntimeError, ServeError) as exc:
        stop(name, state_dir=state_dir)
        raise ServeError(str(exc)) from None
    return handle


def _start_front_door(handle: ServerHandle, state: Path, triton: Ports, tls: ServerTLS | None) -> ServerHandle:
    """Write the front door's configuration with a new admin key and start nginx on the handle's public ports."""
    front = state / "front-door"
    (front / "tmp").mkdir(parents=True, exist_ok=True)
    admin_key = secrets.token_urlsafe(32)
    public = Ports(handle.host, handle.http_port, handle.grpc_port, handle.metrics_port)
    config = nginx_config(public, triton, admin_key, front / "tmp", tls)
    conf = write_config(front / "nginx.conf", config)
    log_file = state / "front-door.log"
    proc = spawn(nginx_command(conf), log_file)
    handle = replace(handle, admin_key=admin_key, front_pid=proc.pid, front_start_time=start_time(proc.pid))
    wait_ready(proc, f"{handle.http_url}/v2/health/ready", 30, log_file, "the front door (nginx)")
    return handle


def handle_of(name: str = "default", state_dir: Path = STATE_DIR) -> ServerHandle | None:
    path = Path(state_dir) / name / "server.json"
    return ServerHandle(**json.loads(path.read_text())) if path.exists() else None


def stop(name: str = "default", timeout: float = 30, state_dir: Path = STATE_DIR) -> bool:
    """Drain, SIGTERM the process group, SIGKILL after ``timeout``. False if none ran. A development server first
    unloads its entry model (new requests are refused while in-flight ones finish); a production one cannot unload
    (model control mode none) and drains on SIGTERM alone, which also lets in-flight requests finish."""
    handle = handle_of(name, state_dir)
    if handle is None:
        return False
    if same_process(handle.pid, handle.start_time):  # a PID reused by another process is left alone
        if not handle.production:
            try:
                req = urllib.request.Request(f"{handle.http_url}/v2/repository/models/cxr/unload", data=b"{}",
                                             method="POST")
                urllib.request.urlopen(req, timeout=10).close()
            except OSError:
                pass  # already unreachable: go straight to SIGTERM
        stop_group(handle.pid, timeout, started=handle.start_time)
    if handle.front_pid and same_process(handle.front_pid, handle.front_start_time):
        stop_group(handle.front_pid, timeout, started=handle.front_start_time)
    (Path(state_dir) / name / "server.json").unlink(missing_ok=True)
    return True
