"""A local Prometheus (Debian's ``prometheus`` binary) on a free loopback port: for the tests and the soak bench,
which scrape a real Triton or read backfilled blocks, and for trying the rules and the dashboard on one machine."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from cxrlt.errors import CxrltError


@dataclass
class LocalPrometheus:
    process: subprocess.Popen
    url: str
    root: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(root: Path, targets: list[str] | None = None, interval: str = "5s", rules: dict | None = None,
          data: Path | None = None, timeout_s: float = 30.0) -> LocalPrometheus:
    """Start Prometheus with its files under ``root``: scraping ``targets`` (host:port) every ``interval`` as job
    ``triton``, evaluating ``rules`` (a rule file's content: ``{"groups": [...]}``), storing in ``data`` (default
    root/data; a folder of backfilled blocks works too); returns once it answers /-/ready."""
    from cxrlt.ops.procs import free_port

    if not shutil.which("prometheus"):
        raise CxrltError("Prometheus is not installed (Debian: apt-get install prometheus)")
    root.mkdir(parents=True, exist_ok=True)
    config: dict = {"global": {"scrape_interval": interval, "evaluation_interval": interval}, "scrape_configs": []}
    if targets:
        config["scrape_configs"] = [{"job_name": "triton", "static_configs": [{"targets": list(targets)}]}]
    if rules:
        (root / "rules.yaml").write_text(yaml.safe_dump(rules))
        config["rule_files"] = [str(root / "rules.yaml")]
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(root / "prometheus.log", "w") as log:
        proc = subprocess.Popen(["prometheus", f"--config.file={root / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={data or root / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200:
                return LocalPrometheus(proc, url, root)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise CxrltError(f"Prometheus did not become ready in {timeout_s:g} s: "
                     f"{(root / 'prometheus.log').read_text()[-2000:]}")
