"""Monitoring in infra/: the alert and recording rules checked and unit-tested by Prometheus' own promtool, the
Grafana dashboard's queries parsed by promtool, and the HPA's custom metric traced to the rule that records it.
(That Triton really serves every metric these use is checked against the real server in tests/test_serving.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "infra" / "base" / "monitoring"
#: raw metric names in PromQL: Triton's nv_* and the entry's cxrlt_* (recorded series have colons)
RAW_METRIC = re.compile(r"\b(nv_[a-z_]+|cxrlt_[a-z_]+)\b")
RECORDED = re.compile(r"\bcxrlt:[a-z0-9_:]+")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's prometheus package (apt-get install prometheus)")
    return path


def rule_groups() -> list[dict]:
    return yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]["groups"]


def dashboard_queries() -> list[str]:
    panels = json.loads((MONITORING / "grafana-dashboard.json").read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def referenced_metric_names() -> set[str]:
    """Every raw metric the rules and the dashboard read (histogram series by their sample names)."""
    exprs = [r["expr"] for g in rule_groups() for r in g["rules"]] + dashboard_queries()
    return {m for e in exprs for m in RAW_METRIC.findall(e)}


def test_rules_pass_promtool_check_and_unit_tests(tmp_path):
    promtool = _promtool()
    (tmp_path / "cxrlt-rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    shutil.copy(MONITORING / "rules-test.yaml", tmp_path / "rules-test.yaml")
    checked = subprocess.run([promtool, "check", "rules", "cxrlt-rules.yaml"], cwd=tmp_path, capture_output=True,
                             text=True)
    assert checked.returncode == 0 and "SUCCESS: 14 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "rules-test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((MONITORING / "rules-test.yaml").read_text())["tests"]
    tested_alerts = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    assert tested_alerts == alerts - {"CxrltEntryLatencyHigh"}, tested_alerts  # latency: a plain threshold


def test_dashboard_queries_parse_and_read_only_recorded_or_raw_series(tmp_path):
    promtool = _promtool()
    queries = [q.replace("$finding", "cardiomegaly") for q in dashboard_queries()]
    assert len(queries) >= 15
    as_rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": q}
                                                           for i, q in enumerate(queries)]}]}
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(as_rules))
    done = subprocess.run([promtool, "check", "rules", str(tmp_path / "dashboard.yaml")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    used = {m for q in queries for m in RECORDED.findall(q)}
    assert used and used <= recorded, used - recorded
    panels = json.loads((MONITORING / "grafana-dashboard.json").read_text())["panels"]
    assert all(p["title"] and p.get("fieldConfig", {}).get("defaults", {}).get("unit") for p in panels
               if p["type"] != "row")


def test_hpa_scales_on_the_recorded_queue_time_through_the_adapter():
    hpa = yaml.safe_load((ROOT / "infra" / "base" / "triton" / "hpa.yaml").read_text())
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods", "not CPU: on GPU pods the CPU says little about load"
    adapter = yaml.safe_load((MONITORING / "prometheus-adapter.yaml").read_text())["rules"]["custom"]
    served = {rule["name"]["as"]: rule["seriesQuery"].split("{")[0] for rule in adapter}
    series = served[metric["pods"]["metric"]["name"]]
    recorded = {r["record"]: r["expr"] for g in rule_groups() for r in g["rules"] if "record" in r}
    assert series in recorded and "nv_inference_queue_duration_us" in recorded[series]
    assert "by (namespace, pod)" in recorded[series], "the adapter maps series to pods by these labels"
