"""The production front door: nginx in front of a tritonserver that listens on loopback only.

tritonserver takes its restricted-API keys only on its command line (``--grpc-restricted-protocol``), where every
process that can list processes reads them (``ps`` on the host, the node's process table in a cluster). So in
production Triton restricts nothing and is reachable from its own network namespace only (127.0.0.1 in the pod),
and the front door is the one listener outside it:

- gRPC: the inference API (health, metadata, ``ModelInfer``) passes; every other method (model control and
  configs, shared memory, statistics, trace, logging, and anything a later Triton adds) needs the admin header,
  and is answered ``PERMISSION_DENIED`` without it. Mutual TLS ends here when configured.
- HTTP: health passes (the kubelet's probes); everything else needs the admin header. Triton's HTTP has no TLS,
  so inference over HTTP is admin-only when gRPC uses TLS, as images (and DICOM headers) must not cross the
  network in clear.
- metrics: ``/metrics`` only.

The admin key is written into the front door's configuration file (mode 0600), read from a file or the
environment, never from an argument. Requests are not logged (they carry patient images), and nginx is told not to
buffer them to disk.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cxrlt.errors import CxrltError

GRPC_SERVICE = "inference.GRPCInferenceService"
#: the gRPC methods a hospital client may call without the admin header: health, metadata and inference
GRPC_OPEN = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
ADMIN_HEADER = "cxrlt-admin-key"
#: the gRPC admin header, named as before the front door existed (Triton prefixes restricted-protocol keys), so
#: operators' clients keep working; HTTP callers send ADMIN_HEADER itself
ADMIN_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
#: where the admin key comes from in a container (an environment variable from a Secret)
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"
#: a request's size limit at the front door: the entry's per-item cap (64 MiB) times a few items, far below the
#: 2 GB gRPC limit that would otherwise apply before any of the entry's checks run
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024
_KEY = re.compile(r"[A-Za-z0-9_\-.~+/=]{16,256}")


class FrontDoorError(CxrltError, ValueError):
    """The front door cannot be configured as asked (no nginx, a missing file, a weak admin key)."""


@dataclass(frozen=True)
class Ports:
    """HTTP, gRPC and metrics ports on one address."""

    host: str
    http: int
    grpc: int
    metrics: int


@dataclass(frozen=True)
class TLSFiles:
    """A server's PEM certificate and key; with ``ca``, clients must present a certificate it signed."""

    cert: str | Path
    key: str | Path
    ca: str | Path | None = None


def admin_key_from(key_file: Path | None = None, env: str = ADMIN_KEY_ENV) -> str:
    """The admin key from ``key_file`` or else the environment variable ``env``; refused when short or odd, since
    it is written into the configuration and guards the admin APIs."""
    if key_file is not None:
        if not Path(key_file).is_file():
            raise FrontDoorError(f"admin key file not found: {key_file}")
        key = Path(key_file).read_text().strip()
        where = str(key_file)
    else:
        key = os.environ.get(env, "").strip()
        where = f"${env}"
    if not _KEY.fullmatch(key):
        raise FrontDoorError(f"the admin key in {where} must be 16 to 256 characters of [A-Za-z0-9_-.~+/=] (make one "
                             "with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return key


#: nginx matches locations on the decoded, normalised path but passes the path as the client sent it: a raw path
#: that normalises into an open route could mean something else to Triton, so such paths are refused outright
_RAW_PATH_CHECK = "        if ($request_uri ~ \"^[^?]*(%|/\\.|//)\") {\n"


def _header_var(header: str) -> str:
    return "$http_" + header.lower().replace("-", "_")


def _admin_map(header: str, variable: str, key: str) -> str:
    return f"map {_header_var(header)} ${variable} {{\n    default 0;\n    \"{key}\" 1;\n}}\n"


def _listen(ports: Ports, port: int, extra: str = "") -> str:
    host = f"[{ports.host}]" if ":" in ports.host else ports.host
    return f"listen {host}:{port}{extra};"


def _grpc_server(public: Ports, tls: TLSFiles | None, max_request_bytes: int) -> str:
    open_methods = "|".join(GRPC_OPEN)
    ssl = ""
    if tls is not None:
        ssl = (f"        ssl_certificate {Path(tls.cert).resolve()};\n"
               f"        ssl_certificate_key {Path(tls.key).resolve()};\n"
               "        ssl_protocols TLSv1.2 TLSv1.3;\n")
        if tls.ca is not None:
            ssl += (f"        ssl_client_certificate {Path(tls.ca).resolve()};\n"
                    "        ssl_verify_client on;\n")
    return (
        "    server {\n"
        f"        {_listen(public, public.grpc, ' ssl http2' if tls else ' http2')}\n"
        f"{ssl}"
        f"        grpc_set_header {ADMIN_GRPC_HEADER} \"\";  # the key never reaches Triton or its logs\n"
        "        error_page 413 = @grpc_too_large;\n"
        "        error_page 400 = @grpc_bad_path;\n"
        f"{_RAW_PATH_CHECK}"
        "            return 400;\n"
        "        }\n"
        f"        location ~ ^/{re.escape(GRPC_SERVICE)}/({open_methods})$ {{\n"
        "            grpc_pass grpc://triton_grpc;\n"
        "        }\n"
        "        location / {  # every other method (and any a later Triton adds) is an admin API\n"
        "            error_page 413 = @grpc_too_large;\n"
        "            error_page 418 = @grpc_admin_only;\n"
        "            if ($cxrlt_grpc_admin = 0) { return 418; }\n"
        "            grpc_pass grpc://triton_grpc;\n"
        "        }\n"
        "        location @grpc_bad_path {\n"
        "            default_type application/grpc;\n"
        "            add_header grpc-status 3 always;  # INVALID_ARGUMENT\n"
        "            add_header grpc-message \"method paths with percent-encoding or dot segments are refused\" "
        "always;\n"
        "            return 204;\n"
        "        }\n"
        "        location @grpc_too_large {\n"
        "            default_type application/grpc;\n"
        "            add_header grpc-status 8 always;  # RESOURCE_EXHAUSTED\n"
        f"            add_header grpc-message \"request larger than {max_request_bytes} bytes: send fewer items per "
        "request\" always;\n"
        "            return 204;\n"
        "        }\n"
        "        location @grpc_admin_only {\n"
        "            default_type application/grpc;\n"
        "            add_header grpc-status 7 always;  # PERMISSION_DENIED\n"
        f"            add_header grpc-message \"admin API: needs the {ADMIN_GRPC_HEADER} header\" always;\n"
        "            return 204;\n"
        "        }\n"
        "    }\n"
    )


def _http_server(public: Ports, inference_open: bool, max_request_bytes: int) -> str:
    # /v2/models/stats is Triton's statistics API, not a model named "stats"
    model = r"/v2/models/(?!stats(/|$))[^/]+(/versions/[0-9]+)?"
    routes = [r"/v2/health/(live|ready)"]
    if inference_open:
        routes += ["/v2", model, f"{model}/(ready|infer)"]
    open_locations = "".join(f"        location ~ ^{route}$ {{\n            proxy_pass http://triton_http;\n"
                             "        }\n" for route in routes)
    return (
        "    server {\n"
        f"        {_listen(public, public.http)}\n"
        f"        proxy_set_header {ADMIN_HEADER} \"\";\n"
        "        proxy_request_buffering off;\n"
        "        proxy_buffering off;\n"
        "        error_page 413 = @http_too_large;\n"
        f"{_RAW_PATH_CHECK}"
        "            return 400 '{\"error\": \"paths with percent-encoding, dot segments or empty segments are "
        "refused\"}';\n"
        "        }\n"
        f"{open_locations}"
        "        location / {\n"
        "            error_page 413 = @http_too_large;\n"
        "            error_page 418 = @http_admin_only;\n"
        "            if ($cxrlt_http_admin = 0) { return 418; }\n"
        "            proxy_pass http://triton_http;\n"
        "        }\n"
        "        location @http_too_large {\n"
        "            default_type application/json;\n"
        f"            return 413 '{{\"error\": \"request larger than {max_request_bytes} bytes: send fewer items per "
        "request\"}';\n"
        "        }\n"
        "        location @http_admin_only {\n"
        "            default_type application/json;\n"
        f"            return 403 '{{\"error\": \"admin API: needs the {ADMIN_HEADER} header\"}}';\n"
        "        }\n"
        "    }\n"
    )


def nginx_config(public: Ports, triton: Ports, admin_key: str, temp_dir: Path, tls: TLSFiles | None = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, pid_file: Path | None = None) -> str:
    """The front door's nginx.conf: ``public`` is where clients connect, ``triton`` where tritonserver listens
    (loopback). nginx runs in the foreground (its caller owns the process), logs errors to stderr and nothing per
    request, and keeps its temporary files under ``temp_dir`` (the root filesystem may be read-only)."""
    if not _KEY.fullmatch(admin_key):
        raise FrontDoorError("the admin key must be 16 to 256 characters of [A-Za-z0-9_-.~+/=]")
    temp = Path(temp_dir).resolve()
    temps = "".join(f"    {kind}_temp_path {temp / kind};\n"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        "# written by cxrlt serve front-door: holds the admin key, keep it mode 0600\n"
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {Path(pid_file).resolve() if pid_file else temp / 'nginx.pid'};\n"
        "error_log stderr error;\n"
        "events {\n    worker_connections 1024;\n}\n"
        "http {\n"
        "    access_log off;  # requests carry patient images and their DICOM headers\n"
        "    server_tokens off;\n"
        f"{temps}"
        f"    client_max_body_size {int(max_request_bytes)};\n"
        "    client_body_buffer_size 1m;\n"
        "    keepalive_requests 100000;\n"
        "    grpc_read_timeout 300s;\n"
        "    grpc_send_timeout 300s;\n"
        f"    upstream triton_grpc {{\n        server {triton.host}:{triton.grpc};\n        keepalive 32;\n    }}\n"
        f"    upstream triton_http {{\n        server {triton.host}:{triton.http};\n        keepalive 8;\n    }}\n"
        + _admin_map(ADMIN_GRPC_HEADER, "cxrlt_grpc_admin", admin_key)
        + _admin_map(ADMIN_HEADER, "cxrlt_http_admin", admin_key)
        + _grpc_server(public, tls, int(max_request_bytes))
        + _http_server(public, tls is None, int(max_request_bytes))
        + "    server {\n"
        f"        {_listen(public, public.metrics)}\n"
        f"        location = /metrics {{\n            proxy_pass http://{triton.host}:{triton.metrics};\n        }}\n"
        "        location / {\n            return 404;\n        }\n"
        "    }\n"
        "}\n"
    )


def write_config(path: Path, config: str) -> Path:
    """Write ``config`` readable by its owner only (it holds the admin key), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(config)
    return path


def nginx_binary() -> str:
    """nginx on PATH or in /usr/sbin (not on a non-root user's PATH on Debian)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FrontDoorError("production serving needs nginx, the front door that holds the admin key: "
                             "apt-get install nginx")
    return found


def nginx_command(config: Path) -> list[str]:
    """The command that runs the front door in the foreground (``-e stderr``: the default error log under
    /var/log may not be writable)."""
    return [nginx_binary(), "-e", "stderr", "-c", str(Path(config).resolve())]
