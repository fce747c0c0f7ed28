"""The production front door (serving/front_door.py), run for real: nginx with the configuration it writes, in front of
a gRPC and an HTTP upstream that record what reaches them (what Triton would see). The whole production server
behind it is tested in tests/test_serving.py and, with the pod's commands, in tests/test_pod_constraints.py."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path

import pytest

from cxrlt.ops.procs import free_port
from serving.front_door import (
    ADMIN_GRPC_HEADER,
    ADMIN_HEADER,
    FrontDoorError,
    Ports,
    admin_key_from,
    nginx_binary,
    nginx_command,
    nginx_config,
    write_config,
)

KEY = "k3y-" + "x" * 28
MiB = 1024 * 1024


def test_admin_key_comes_from_a_file_or_the_environment_and_weak_keys_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_ADMIN_KEY", f"  {KEY}\n")
    assert admin_key_from() == KEY
    (tmp_path / "key").write_text(KEY[::-1] + "\n")
    assert admin_key_from(tmp_path / "key") == KEY[::-1]  # the file wins over the environment
    with pytest.raises(FrontDoorError, match="not found"):
        admin_key_from(tmp_path / "missing")
    for weak in ["", "x" * 15, "x" * 257, "a" * 20 + '";', "a" * 20 + " b"]:  # short, long, nginx syntax, space
        monkeypatch.setenv("TRITON_ADMIN_KEY", weak)
        with pytest.raises(FrontDoorError, match="16 to 256 characters"):
            admin_key_from()
    with pytest.raises(FrontDoorError):
        nginx_config(Ports("127.0.0.1", 1, 2, 3), Ports("127.0.0.1", 4, 5, 6), 'short";', tmp_path)


def test_configuration_is_owner_only_and_caps_the_request_size(tmp_path):
    text = nginx_config(Ports("0.0.0.0", 8000, 8001, 8002), Ports("127.0.0.1", 18000, 18001, 18002), KEY, tmp_path,
                        max_request_bytes=3 * MiB)
    assert "client_max_body_size 3145728;" in text  # 3 x 1,048,576
    assert "access_log off;" in text and "server 127.0.0.1:18001;" in text and "listen 0.0.0.0:8001 http2;" in text
    path = write_config(tmp_path / "front" / "nginx.conf", text)
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.fixture(scope="module")
def front_door(tmp_path_factory):
    """nginx (no TLS, so HTTP inference is open as in a development front door) before recording upstreams."""
    import grpc

    try:
        nginx_binary()
    except FrontDoorError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("front")
    public = Ports("127.0.0.1", free_port(), free_port(), free_port())
    upstream = Ports("127.0.0.1", free_port(), free_port(), free_port())
    seen: list[tuple[str, str, int, dict]] = []  # (protocol, path, body bytes, headers)

    class Recorder(grpc.GenericRpcHandler):
        def service(self, details):
            def answer(request: bytes, context) -> bytes:
                seen.append(("grpc", details.method, len(request), dict(details.invocation_metadata)))
                return b""
            return grpc.unary_unary_rpc_method_handler(answer)

    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 1 << 30)])
    server.add_generic_rpc_handlers([Recorder()])
    server.add_insecure_port(f"127.0.0.1:{upstream.grpc}")
    server.start()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(("http", self.path, len(body), {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = _record

        def log_message(self, *args) -> None:
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler) for port in (upstream.http,
                                                                                           upstream.metrics)]
    for httpd in servers:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    conf = write_config(root / "nginx.conf", nginx_config(public, upstream, KEY, root, max_request_bytes=4 * MiB))
    nginx = subprocess.Popen(nginx_command(conf), stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{public.http}/v2/health/ready", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    yield public, seen
    nginx.terminate()
    nginx.wait(20)
    for httpd in servers:
        httpd.shutdown()
    server.stop(0)


def _grpc_call(port: int, method: str, payload: bytes = b"", key: str | None = None):
    """(status code name, details) of a raw unary call; OK for an answered one."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 30)]) as channel:
        call = channel.unary_unary(method)
        try:
            call(payload, metadata=[(ADMIN_GRPC_HEADER, key)] if key else None, timeout=30)
            return "OK", ""
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()


def test_grpc_inference_passes_and_every_other_method_needs_the_key(front_door):
    public, seen = front_door
    service = "/inference.GRPCInferenceService"
    seen.clear()
    assert _grpc_call(public.grpc, f"{service}/ModelInfer", b"x" * 1000) == ("OK", "")
    assert seen[-1][:3] == ("grpc", f"{service}/ModelInfer", 1000)
    for method in ["RepositoryModelUnload", "ModelConfig", "ModelStatistics", "TraceSetting", "LogSettings",
                   "SystemSharedMemoryRegister", "SomethingALaterTritonAdds"]:
        code, details = _grpc_call(public.grpc, f"{service}/{method}")
        assert code == "PERMISSION_DENIED" and ADMIN_GRPC_HEADER in details, (method, code, details)
        assert _grpc_call(public.grpc, f"{service}/{method}", key="wrong-" + KEY)[0] == "PERMISSION_DENIED"
    assert [s[1] for s in seen] == [f"{service}/ModelInfer"]  # nothing refused reached the upstream
    assert _grpc_call(public.grpc, f"{service}/ModelStatistics", key=KEY) == ("OK", "")
    assert seen[-1][1] == f"{service}/ModelStatistics"
    assert ADMIN_GRPC_HEADER not in seen[-1][3]  # the key never reaches Triton
    # a path that normalises into an open method is refused, not passed on as sent
    code, details = _grpc_call(public.grpc, f"{service}/RepositoryModelUnload/../ModelInfer")
    assert code == "INVALID_ARGUMENT" and "dot segments" in details


def test_grpc_requests_over_the_cap_are_refused_with_resource_exhausted(front_door):
    public, seen = front_door
    seen.clear()
    assert _grpc_call(public.grpc, "/inference.GRPCInferenceService/ModelInfer", b"x" * (3 * MiB))[0] == "OK"
    assert seen[-1][2] == 3 * MiB
    code, details = _grpc_call(public.grpc, "/inference.GRPCInferenceService/ModelInfer", b"x" * (6 * MiB))
    assert code == "RESOURCE_EXHAUSTED" and f"larger than {4 * MiB} bytes" in details
    assert len(seen) == 1


def _http(port: int, path: str, body: bytes | None = None, key: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={ADMIN_HEADER: key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_opens_health_and_inference_only(front_door):
    public, seen = front_door
    seen.clear()
    for path in ["/v2/health/ready", "/v2/health/live", "/v2", "/v2/models/cxr", "/v2/models/cxr/ready"]:
        assert _http(public.http, path)[0] == 200, path
    assert _http(public.http, "/v2/models/cxr/infer", b"{}")[0] == 200
    # the statistics route looks like a model's metadata route: it is an admin API all the same
    for path in ["/v2/models/stats", "/v2/models/cxr/stats", "/v2/models/cxr/config", "/v2/repository/index",
                 "/v2/trace/setting", "/v2/logging", "/v2/systemsharedmemory/status", "/metrics"]:
        status, body = _http(public.http, path)
        assert status == 403 and ADMIN_HEADER.encode() in body, (path, status, body)
    for path in ["/v2/models/cxr/%2e%2e/stats", "/v2/models/cxr/../stats", "/v2//models/stats"]:
        assert _http(public.http, path)[0] == 400, path
    assert len(seen) == 6
    assert _http(public.http, "/v2/models/stats", key=KEY)[0] == 200
    assert seen[-1][1] == "/v2/models/stats" and ADMIN_HEADER not in seen[-1][3]
    status, body = _http(public.http, "/v2/models/cxr/infer", b"x" * (5 * MiB))
    assert status == 413 and b"larger than" in body
    assert len(seen) == 7


def test_metrics_port_serves_only_metrics(front_door):
    public, seen = front_door
    seen.clear()
    assert _http(public.metrics, "/metrics")[0] == 200
    assert _http(public.metrics, "/v2/models/stats")[0] == 404
    assert [s[1] for s in seen] == ["/metrics"]


def test_front_door_cli_writes_a_config_nginx_accepts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cxrlt.cli import app

    try:
        nginx = nginx_binary()
    except FrontDoorError as exc:
        pytest.skip(str(exc))
    conf = tmp_path / "front" / "nginx.conf"
    runner = CliRunner()
    refused = runner.invoke(app, ["serve", "front-door", "--out", str(conf)], env={"TRITON_ADMIN_KEY": "short"})
    assert refused.exit_code != 0 and not conf.exists()
    done = runner.invoke(app, ["serve", "front-door", "--out", str(conf), "--temp-dir", str(tmp_path / "t"),
                               "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port",
                               str(free_port()), "--max-request-mb", "2"], env={"TRITON_ADMIN_KEY": KEY})
    assert done.exit_code == 0, done.output
    assert KEY not in done.output and f"client_max_body_size {2 * MiB};" in conf.read_text()
    (tmp_path / "t").mkdir()
    checked = subprocess.run([nginx, "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert Path(conf).stat().st_mode & 0o777 == 0o600
