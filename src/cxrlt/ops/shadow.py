"""``cxrlt shadow report`` and promotion's shadow evidence: the ``cxr`` entry's agreement counters, read from
Prometheus over a window (``increase()``) or from a Triton metrics endpoint (totals since the server started), per
champion/challenger pair, summarised by :func:`cxrlt.shadow.pair_report`."""

from __future__ import annotations

import re

from cxrlt.errors import InvalidInputError
from cxrlt.ops.monitor import PrometheusError, query
from cxrlt.shadow import pair_report

SUMS = "cxrlt_shadow_sums_total"
DROPPED = "cxrlt_shadow_dropped_total"
_DURATION = re.compile(r"\d+[smhdw]")


def _reports(sums: dict, dropped: dict) -> dict[tuple[str, str], dict]:
    """(champion, challenger) -> :func:`pair_report`, from samples already grouped by pair."""
    return {pair: pair_report(values, dropped.get(pair, {})) for pair, values in sorted(sums.items())}


def _add(sums: dict, dropped: dict, name: str, labels: dict, value: float) -> None:
    pair = (labels.get("champion", ""), labels.get("challenger", ""))
    if name == SUMS:
        finding = sums.setdefault(pair, {}).setdefault((labels["kind"], labels["finding"]), {})
        finding[labels["stat"]] = finding.get(labels["stat"], 0.0) + value
    elif name == DROPPED:
        reasons = dropped.setdefault(pair, {})
        reasons[labels["reason"]] = reasons.get(labels["reason"], 0.0) + value


def from_prometheus(url: str, window: str = "7d", at: float | None = None) -> dict[tuple[str, str], dict]:
    """Every pair's agreement over ``window`` (summed over the Triton replicas Prometheus scrapes)."""
    if not _DURATION.fullmatch(window):
        raise InvalidInputError(f"window must be a Prometheus duration such as 6h or 7d, got {window!r}")
    sums: dict = {}
    dropped: dict = {}
    for name, by in ((SUMS, "champion, challenger, kind, finding, stat"), (DROPPED, "champion, challenger, reason")):
        for sample in query(url, f"sum by ({by}) (increase({name}[{window}]))", at):
            _add(sums, dropped, name, sample["metric"], float(sample["value"][1]))
    return _reports(sums, dropped)


def from_metrics(url: str, timeout: float = 10.0) -> dict[tuple[str, str], dict]:
    """Every pair's agreement since the server started, scraped from its metrics endpoint (``http://host:8002``
    or the full ``/metrics`` URL)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    url = url if url.rstrip("/").endswith("/metrics") else f"{url.rstrip('/')}/metrics"
    try:
        reply = requests.get(url, timeout=timeout)
        reply.raise_for_status()
    except requests.RequestException as exc:
        raise PrometheusError(f"the metrics endpoint {url} did not answer ({exc}); check --metrics-url") from exc
    sums: dict = {}
    dropped: dict = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            # the text parser names a counter's sample with its _total suffix, the family without it
            _add(sums, dropped, sample.name, sample.labels, sample.value)
    return _reports(sums, dropped)


def format_report(pair: tuple[str, str], report: dict, top: int = 10) -> str:
    """A pair's agreement as text: the totals, then the findings with the most flips."""
    champion, challenger = pair
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(report["dropped"].items())) or "none"
    worst, lowest = report["worst_flip_rate"], report["lowest_correlation"]
    lines = [f"challenger {challenger} shadowing champion {champion}: {report['items']} items compared; "
             f"dropped: {dropped}",
             f"  worst flip rate {'n/a' if worst is None else f'{worst:.3f}'}, lowest score correlation "
             f"{'n/a' if lowest is None else f'{lowest:.3f}'} (known findings)",
             f"  {'finding':<32} {'kind':<7} {'n':>6} {'flips':>7} {'mean |d|':>9} {'r':>7}"]
    ranked = sorted(report["findings"], key=lambda f: (-(f["flip_rate"] or 0.0), f["finding"]))
    for f in ranked[:top]:
        def fmt(value, spec):
            return "n/a" if value is None else format(value, spec)
        lines.append(f"  {f['finding']:<32} {f['kind']:<7} {f['n']:>6} {fmt(f['flip_rate'], '.3f'):>7} "
                     f"{fmt(f['mean_abs_diff'], '.4f'):>9} {fmt(f['correlation'], '.3f'):>7}")
    return "\n".join(lines)
