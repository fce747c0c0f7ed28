"""A stub KFP API server that keeps state (the real kfp.Client talks to it over real HTTP), and the compiled
pipelines; conftest.py makes both fixtures available to every test module."""

import json
import re
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest


class StubKFP(BaseHTTPRequestHandler):
    state: dict = {}

    def _reply(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self):  # noqa: N802 - http.server API
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        st = self.state
        st["requests"].append(("GET", url.path, query))
        if url.path == "/apis/v2beta1/healthz":
            self._reply({"multi_user": False})
        elif url.path == "/apis/v2beta1/experiments":
            self._reply({"experiments": [], "total_size": 0})
        elif url.path == "/apis/v2beta1/recurringruns":
            runs = [r for r in st["recurring"].values() if r["experiment_id"] == query.get("experiment_id")]
            self._reply({"recurringRuns": runs, "total_size": len(runs)})
        elif url.path == "/apis/v2beta1/pipelines":
            wanted = json.loads(query.get("filter", "{}")).get("predicates", [{}])[0].get("stringValue")
            found = [p for p in st["pipelines"].values() if p["display_name"] == wanted]
            self._reply({"pipelines": found, "total_size": len(found)})
        elif m := re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", url.path):
            found = [v for v in st["versions"].values() if v["pipeline_id"] == m[1]]
            self._reply({"pipeline_versions": found, "total_size": len(found)})
        else:
            self.send_error(404)

    def do_POST(self):  # noqa: N802
        url = urlparse(self.path)
        st = self.state
        raw = self._body()
        if url.path.startswith("/apis/v2beta1/pipelines/upload"):
            form = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw)
            package = next(part.get_payload(decode=True) for part in form.iter_parts())
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            st["requests"].append(("POST", url.path, query))
            if url.path == "/apis/v2beta1/pipelines/upload":
                pid = f"p-{len(st['pipelines']) + 1}"
                st["pipelines"][pid] = {"pipeline_id": pid, "display_name": query["name"]}
                return self._reply(st["pipelines"][pid])
            vid = f"v-{len(st['versions']) + 1}"
            st["versions"][vid] = {"pipeline_version_id": vid, "pipeline_id": query["pipelineid"],
                                   "display_name": query["name"], "size": len(package)}
            return self._reply(st["versions"][vid])
        body = json.loads(raw or b"{}")
        st["requests"].append(("POST", url.path, body))
        if url.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif url.path == "/apis/v2beta1/recurringruns":
            rid = f"rr-{len(st['requests'])}"
            st["recurring"][rid] = {**body, "recurring_run_id": rid, "status": "ENABLED"}
            self._reply(st["recurring"][rid])
        elif url.path == "/apis/v2beta1/runs":
            self._reply({**body, "run_id": "run-7", "state": "PENDING"})
        else:
            self.send_error(404)

    def do_DELETE(self):  # noqa: N802
        url = urlparse(self.path)
        self.state["requests"].append(("DELETE", url.path, None))
        rid = url.path.rsplit("/", 1)[-1]
        if url.path.startswith("/apis/v2beta1/recurringruns/") and self.state["recurring"].pop(rid, None):
            self._reply({})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_stub():
    StubKFP.state = {"requests": [], "recurring": {}, "pipelines": {}, "versions": {}}
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", StubKFP.state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from pipelines.compile import compile_all

    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    return out


def posted(state, path):
    """The JSON bodies POSTed to ``path``."""
    return [b for m, p, b in state["requests"] if m == "POST" and p == path]
