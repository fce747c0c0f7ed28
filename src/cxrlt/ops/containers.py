"""Running the project's images on this machine: podman (Docker where its daemon works) for image builds, the
Docker API that kfp.local's DockerRunner needs, and the CPU Triton image.

podman runs with ``images/containers.conf`` (runc, cgroupfs, lowered ulimits; see that file) through
``CONTAINERS_CONF``; nothing in /etc is changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cxrlt.errors import CxrltError

ROOT = Path(__file__).resolve().parents[3]
CONTAINERS_CONF = ROOT / "images" / "containers.conf"
#: the uid the images run as (their USER): host folders a container writes to must be writable by it
CONTAINER_UID = 1000


class ContainerError(CxrltError, RuntimeError):
    """No usable container engine, or a container did not start; the message says why."""


def container_env() -> dict[str, str]:
    env = dict(os.environ)
    if CONTAINERS_CONF.exists():
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def engine_command(engine: str | None = None) -> list[str]:
    """podman or docker, whichever works here (``engine`` to insist on one); raises ContainerError otherwise."""
    candidates = [engine] if engine else ["podman", "docker"]
    for name in candidates:
        exe = shutil.which(name)
        if exe and subprocess.run([exe, "info"], capture_output=True, env=container_env()).returncode == 0:
            return [exe]
    raise ContainerError(f"no usable container engine ({', '.join(candidates)}): make images installs podman on "
                         "Debian")


def image_exists(engine: list[str], image: str) -> bool:
    return subprocess.run([*engine, "image", "inspect", image], capture_output=True,
                          env=container_env()).returncode == 0


#: the OCI label images/build.py sets to the git revision an image was built from
REVISION_LABEL = "org.opencontainers.image.revision"


def image_revision(engine: list[str], image: str) -> str | None:
    """The git revision ``image`` was built from (its label), or None when the image is not there."""
    done = subprocess.run([*engine, "image", "inspect", "--format", f'{{{{index .Config.Labels "{REVISION_LABEL}"}}}}',
                           image], capture_output=True, text=True, env=container_env())
    return done.stdout.strip() if done.returncode == 0 else None


def stale_images(engine: list[str], images: list[str], revision: str) -> dict[str, str | None]:
    """The images not built from ``revision`` (a git commit): image -> the revision it was built from (None: not
    built). Runs against an image of another commit would test other code than the checkout's."""
    built = {image: image_revision(engine, image) for image in images}
    return {image: rev for image, rev in built.items() if rev != revision}


@contextlib.contextmanager
def docker_api():
    """Set ``DOCKER_HOST`` for the Docker API clients (kfp.local's DockerRunner) while the block runs: Docker's own
    daemon when it works, otherwise podman's Docker-compatible service on a private socket, stopped by PID after."""
    from cxrlt.ops.procs import spawn, stop_group

    engine = engine_command()
    if Path(engine[0]).name == "docker":
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="cxrlt-podman-"))
    sock = folder / "podman.sock"
    proc = spawn([*engine, "system", "service", "--time=0", f"unix://{sock}"], folder / "service.log",
                 env=container_env())
    before = os.environ.get("DOCKER_HOST")
    try:
        deadline = time.time() + 30
        while not sock.exists():
            if time.time() > deadline or proc.poll() is not None:
                raise ContainerError(f"podman's API service did not start: {(folder / 'service.log').read_text()}")
            time.sleep(0.2)
        os.environ["DOCKER_HOST"] = f"unix://{sock}"
        yield
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before
        stop_group(proc.pid)
        shutil.rmtree(folder, ignore_errors=True)


def give_to_container_user(folder: Path) -> None:
    """Make ``folder`` (a pipeline root, a model repository) usable by the images' non-root user."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chown(path, CONTAINER_UID, CONTAINER_UID)


def start_triton(repository: Path, name: str, image: str, http_port: int, grpc_port: int, metrics_port: int,
                 timeout: float = 300) -> str:
    """Run the CPU serve image on ``repository`` (mounted read-only, read-only root filesystem, host network,
    loopback ports) and wait until it is ready; returns the container name (stop it with :func:`stop_container`)."""
    import urllib.request

    engine = engine_command()
    for path in [repository, *repository.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    # no pipes: podman's conmon of a detached container can keep a captured stdout open, and the call never returns
    with tempfile.TemporaryFile() as err:
        started = subprocess.run([*engine, "run", "-d", "--rm", "--name", name, "--network", "host", "--shm-size",
                                  "1g", "--read-only", "--tmpfs", "/tmp", "-v", f"{repository.resolve()}:/models:ro",
                                  image, "--model-repository=/models", "--model-control-mode=none",
                                  "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                                  "--metrics-address=127.0.0.1", f"--http-port={http_port}",
                                  f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=container_env())
        err.seek(0)
        if started.returncode:
            raise ContainerError(f"could not start {image}: {err.read().decode(errors='replace')[-2000:]}")
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2).status == 200:
                return name
        if subprocess.run([*engine, "container", "exists", name], stdin=subprocess.DEVNULL,
                          env=container_env()).returncode != 0:
            break
        time.sleep(2)
    logs = subprocess.run([*engine, "logs", name], capture_output=True, text=True, env=container_env())
    stop_container(name)
    raise ContainerError(f"Triton container {name} did not become ready:\n{(logs.stdout + logs.stderr)[-3000:]}")


def stop_container(name: str, timeout: int = 20) -> None:
    subprocess.run([*engine_command(), "stop", "-t", str(timeout), name], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=container_env())


def podman_missing_container_is_not_found() -> None:
    """Make docker-py raise ``NotFound`` for podman's answer about a container it has already removed.

    kfp.local's DockerRunner starts each step with ``auto_remove=True`` and catches ``NotFound`` when a step exits
    before its logs are streamed. Docker answers that race with 404; podman's Docker-compatible API answers 500
    "no such container", which docker-py turns into a plain ``APIError`` and the pipeline run fails although the step
    finished. Idempotent; other errors are untouched."""
    import docker.api.client as api_client
    import docker.errors as errors

    if getattr(api_client.create_api_error_from_http_exception, "_cxrlt_podman", False):
        return
    original = errors.create_api_error_from_http_exception

    def mapped(e):
        response = e.response
        if response is not None and response.status_code == 500 and \
                "no such container" in (response.text or "").lower():
            raise errors.NotFound(e, response=response, explanation=(response.text or "").strip()) from e
        return original(e)

    mapped._cxrlt_podman = True
    api_client.create_api_error_from_http_exception = mapped
