"""`cxrlt pipeline schedule` against a stub KFP API server (the real kfp.Client over real HTTP)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from cxrlt.cli import app


class StubKFP(BaseHTTPRequestHandler):
    requests: list = []

    def _reply(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server API
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [], "total_size": 0})
        else:
            self.send_error(404)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path == "/apis/v2beta1/recurringruns":
            self._reply({**body, "recurring_run_id": "rr-42", "status": "ENABLED"})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_stub():
    StubKFP.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", StubKFP.requests
    server.shutdown()
    server.server_close()


def test_schedule_creates_a_cron_recurring_run(kfp_stub, tmp_path):
    from pipelines.compile import compile_all

    host, requests = kfp_stub
    package = compile_all(tmp_path)[0]
    result = CliRunner().invoke(app, ["pipeline", "schedule", "--host", host, "--cron", "0 0 2 * * 0",
                                      "--package", str(package), "--param", "data_dir=/data/padchest"])
    assert result.exit_code == 0, result.output
    assert "rr-42" in result.output
    posted = [b for m, p, b in requests if m == "POST" and p == "/apis/v2beta1/recurringruns"]
    assert len(posted) == 1
    run = posted[0]
    assert run["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * 0"
    assert run["max_concurrency"] == "1" or run["max_concurrency"] == 1
    assert run["no_catchup"] is True and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"]["data_dir"] == "/data/padchest"
    spec = run["pipeline_spec"]
    spec = spec.get("pipeline_spec", spec)  # with a platform spec the IR is nested under pipeline_spec
    assert spec["pipelineInfo"]["name"] == "cxrlt-training"


def test_schedule_refuses_five_field_cron(kfp_stub, tmp_path):
    host, _ = kfp_stub
    result = CliRunner().invoke(app, ["pipeline", "schedule", "--host", host, "--cron", "0 2 * * 0",
                                      "--package", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1 and "6 fields" in result.output
