"""Shadow scoring: the agreement sums and their summary by hand, and a real tritonserver that answers with the
champion while the challenger (served beside it) scores the sampled items in the background."""

import json
import shutil
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
from cxrlt.shadow import STATS, ShadowSampler, agreement_sums, summarise


def test_agreement_of_three_items_by_hand():
    """champion 0.2, 0.6, 0.9 and challenger 0.4, 0.4, 0.8 at threshold 0.5: one flip (0.6 vs 0.4), |d| 0.2 + 0.2
    + 0.1, and Pearson's r = cov / sqrt(var var) with n-scaled sums 2/5, 37/50 and 8/25 (exact fractions)."""
    x = np.array([[0.2], [0.6], [0.9], [np.nan]])
    y = np.array([[0.4], [0.4], [0.8], [0.7]])  # the NaN item (a finding the champion has no score for) is left out
    sums = {k: float(v[0]) for k, v in agreement_sums(x, y, 0.5).items()}
    assert sums["n"] == 3 and sums["flips"] == 1
    assert sums["abs_diff"] == pytest.approx(0.5) and sums["xy"] == pytest.approx(0.08 + 0.24 + 0.72)
    out = summarise(sums)
    assert out["n"] == 3 and out["flip_rate"] == pytest.approx(1 / 3)
    assert out["mean_abs_diff"] == pytest.approx(0.5 / 3)
    assert out["correlation"] == pytest.approx(0.4 / np.sqrt(0.74 * 0.32), abs=1e-12)  # 0.82199...


def test_a_threshold_tie_counts_as_positive_and_constant_scores_have_no_correlation():
    sums = {k: float(v[0]) for k, v in agreement_sums(np.array([[0.5], [0.5]]), np.array([[0.49], [0.5]]),
                                                      0.5).items()}
    out = summarise(sums)
    assert sums["flips"] == 1 and out["correlation"] is None  # the champion's scores do not vary
    assert summarise({s: 0.0 for s in STATS}) == {"n": 0, "flip_rate": None, "mean_abs_diff": None,
                                                   "correlation": None}


def test_summaries_do_not_change_when_every_sum_is_scaled():
    """Prometheus' increase() extrapolates every series of a scrape by the same factor: rates and r must not move."""
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 3)), rng.random((50, 3))
    sums = agreement_sums(x, y, 0.5)
    one = summarise({k: v[1] for k, v in sums.items()})
    scaled = summarise({k: 1.37 * v[1] for k, v in sums.items()})
    for key in ("flip_rate", "mean_abs_diff", "correlation"):
        assert scaled[key] == pytest.approx(one[key], rel=1e-12)
    assert one["correlation"] == pytest.approx(np.corrcoef(x[:, 1], y[:, 1])[0, 1], abs=1e-12)


@pytest.mark.parametrize("fraction, n, expected", [(0.1, 1000, 100), (0.25, 10, 2), (1.0, 7, 7), (0.3, 20, 6)])
def test_the_sampler_takes_exactly_its_share_evenly(fraction, n, expected):
    sampler = ShadowSampler(fraction)
    taken = np.concatenate([sampler.take(k) for k in (1, 2, 3, n - 6)])  # across calls as across batches
    assert taken.sum() == expected
    gaps = np.diff(np.flatnonzero(taken))
    assert gaps.size == 0 or gaps.max() - gaps.min() <= 1  # evenly spread, never in clumps
    with pytest.raises(ValueError, match="fraction"):
        ShadowSampler(0.0)


# ---------------------------------------------------------------------------------------------- a real tritonserver
@pytest.fixture(scope="module")
def bundles(tiny_bundle, tmp_path_factory):
    """The champion (the tiny bundle) and a challenger that differs honestly: its frontal ensemble is the PCAM
    member alone, its known findings' calibration intercepts are 0.5 lower, and its zero-shot slope is halved."""
    from cxrlt.export import export_bundle

    root = tmp_path_factory.mktemp("shadow")
    champion, challenger = root / "champion", root / "challenger"
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", champion)
    shutil.copytree(champion, challenger)
    spec = json.loads((challenger / "bundle.json").read_text())
    frontal = spec["views"]["frontal"]
    frontal["weights"] = {k: (1.0 if k == "pcam" else 0.0) for k in frontal["weights"]}
    spec["calibration"]["b"] = {c: b - 0.5 for c, b in spec["calibration"]["b"].items()}
    spec["zeroshot"]["a"] = spec["zeroshot"]["a"] / 2
    (challenger / "bundle.json").write_text(json.dumps(spec))
    return champion, challenger


def _metrics(handle) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{handle.host}:{handle.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
            if f.name.startswith("cxrlt_") for s in f.samples}


def _shadow_sums(scraped) -> dict[tuple[str, str, str], float]:
    """(kind, finding, stat) -> value of cxrlt_shadow_sums_total."""
    out = {}
    for (name, labels), value in scraped.items():
        if name == "cxrlt_shadow_sums_total":
            d = dict(labels)
            out[(d["kind"], d["finding"], d["stat"])] = value
    return out


def _start_shadow(bundles, root, **options):
    """A server answering with the champion (served as cxrlt-bundle/1) and shadow-scoring the challenger (2)."""
    from serving.repository import ServingOptions, build_repository
    from serving.server import start

    champion, challenger = bundles
    summary = build_repository(champion, root / "repo", ServingOptions(**options), "cxrlt-bundle/1",
                               shadow_dir=challenger, shadow_version="cxrlt-bundle/2")
    return start(root / "repo", name=f"shadow-{root.name}", http_port=0, grpc_port=0, metrics_port=0,
                 state_dir=root / "state"), summary


@pytest.fixture(scope="module")
def shadow_server(bundles, tmp_path_factory):
    from serving.server import stop

    root = tmp_path_factory.mktemp("shadow-triton")
    handle, summary = _start_shadow(bundles, root, shadow_fraction=1.0, shadow_queue=4, shadow_flush_s=0.2)
    yield handle, summary
    stop(handle.name, state_dir=root / "state")


@pytest.mark.slow
def test_the_challenger_is_served_beside_the_champion_under_prefixed_names(shadow_server):
    _, summary = shadow_server
    ours = [m for m in summary["models"] if not m.startswith("shadow_")]
    assert sorted(f"shadow_{m}" for m in ours) == sorted(m for m in summary["models"] if m.startswith("shadow_"))
    assert summary["shadow_version"] == "cxrlt-bundle/2" and summary["model_version"] == "cxrlt-bundle/1"


@pytest.mark.slow
def test_answers_are_the_champions_and_the_challengers_agreement_is_counted(shadow_server, synth_data):
    """Every scored item (fraction 1) is compared in the background: after the answers, the counters grow by the
    sums computed here from the champion's answers and the challenger's own answers to the same images."""
    from serving.client import CXRClient

    handle, _ = shadow_server
    ids = pd.read_csv(synth_data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:4]
    pngs = [synth_data / "images" / i for i in ids]
    before = _shadow_sums(_metrics(handle))
    client = CXRClient(handle.grpc_url, batch_size=2)
    ours = client.infer_files(pngs)
    theirs = CXRClient(handle.grpc_url, batch_size=2, model="shadow_cxr").infer_files(pngs)
    assert all(r.error == "" and r.model_version == "cxrlt-bundle/1" for r in ours)
    assert all(r.model_version == "cxrlt-bundle/2" for r in theirs)
    for kind, names in (("known", KNOWN_CLASSES), ("unseen", UNSEEN_CLASSES)):  # the answer is not the challenger's
        assert min(abs(getattr(a, kind)[c] - getattr(b, kind)[c]) for a, b in zip(ours, theirs, strict=True)
                   for c in names) > 1e-4, kind
    deadline = time.time() + 60
    while time.time() < deadline:
        after = _shadow_sums(_metrics(handle))
        if after.get(("known", KNOWN_CLASSES[0], "n"), 0) - before.get(("known", KNOWN_CLASSES[0], "n"), 0) >= 4:
            break
        time.sleep(0.5)
    for kind, names in (("known", KNOWN_CLASSES), ("unseen", UNSEEN_CLASSES)):
        x = np.array([[getattr(r, kind)[c] for c in names] for r in ours])
        y = np.array([[getattr(r, kind)[c] for c in names] for r in theirs])
        expected = agreement_sums(x, y, 0.5)
        for j, name in enumerate(names):
            for stat in STATS:
                grew = after.get((kind, name, stat), 0.0) - before.get((kind, name, stat), 0.0)
                assert grew == pytest.approx(expected[stat][j], abs=1e-5), (kind, name, stat)
    dropped = {dict(k[1])["reason"]: v for k, v in _metrics(handle).items() if k[0] == "cxrlt_shadow_dropped_total"}
    assert dropped == {"queue_full": 0.0, "failed": 0.0}
    labels = next(dict(k[1]) for k in _metrics(handle) if k[0] == "cxrlt_shadow_sums_total")
    assert (labels["champion"], labels["challenger"]) == ("cxrlt-bundle/1", "cxrlt-bundle/2")


@pytest.mark.slow
def test_items_beyond_the_shadow_queue_are_dropped_and_counted(shadow_server, synth_data):
    """One request of six items with room for four in flight: the six are dropped together and counted; the
    answer is unchanged."""
    from serving.client import CXRClient

    handle, _ = shadow_server
    ids = pd.read_csv(synth_data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:6]
    pngs = [synth_data / "images" / i for i in ids]
    before = _metrics(handle)
    results = CXRClient(handle.grpc_url, batch_size=6).infer_files(pngs)
    assert [r.error for r in results] == [""] * 6
    after = _metrics(handle)
    key = next(k for k in after if k[0] == "cxrlt_shadow_dropped_total" and dict(k[1])["reason"] == "queue_full")
    assert after[key] - before.get(key, 0.0) == 6


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("prometheus"), reason="needs Debian's prometheus (make test installs it)")
def test_the_report_reads_the_same_agreement_from_triton_and_from_a_prometheus_scraping_it(bundles, synth_data,
                                                                                           tmp_path):
    """A real Prometheus scrapes a fresh shadow server (half the items shadowed) every second from before its
    first request: `cxrlt shadow report` over a window gives the rates and correlations of the server's own totals
    (every series starts at 0 in the window, so increase() scales them all alike and ratios are unchanged; the item
    count is at least the true one), and --config says whether promotion's requirement is met."""
    from typer.testing import CliRunner

    from cxrlt.cli import app
    from cxrlt.ops import prometheus_server
    from cxrlt.ops.monitor import query
    from cxrlt.ops.shadow import from_metrics, from_prometheus
    from serving.client import CXRClient
    from serving.server import stop

    # the challenger's own entry gets the bytes here (the other tests: its networks get the preprocessed images)
    handle, _ = _start_shadow(bundles, tmp_path, shadow_fraction=0.5, shadow_reuse_inputs=False)
    prometheus = prometheus_server.start(tmp_path / "prometheus", [f"{handle.host}:{handle.metrics_port}"], "1s")
    url = prometheus.url
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the first scrape, before any traffic
            try:
                if query(url, "cxrlt_shadow_sums_total"):
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        ids = pd.read_csv(synth_data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:12]
        client = CXRClient(handle.grpc_url, batch_size=2)
        for start in range(0, 12, 4):  # traffic in three bursts between scrapes
            client.infer_files([synth_data / "images" / i for i in ids[start:start + 4]])
            time.sleep(1.5)
        pair = ("cxrlt-bundle/1", "cxrlt-bundle/2")
        deadline = time.time() + 60
        while time.time() < deadline:
            truth = from_metrics(f"http://{handle.host}:{handle.metrics_port}")[pair]
            time.sleep(2.5)  # at least two scrapes after the last shadow call finished
            if from_metrics(f"http://{handle.host}:{handle.metrics_port}")[pair]["items"] == truth["items"]:
                break
        window = from_prometheus(url, "10m")[pair]
        assert window["items"] >= truth["items"] > 0
        theirs = {(f["kind"], f["finding"]): f for f in window["findings"]}
        for ours in truth["findings"]:
            for key in ("flip_rate", "mean_abs_diff", "correlation"):
                if ours[key] is None:
                    assert theirs[(ours["kind"], ours["finding"])][key] is None
                else:
                    # 1e-6: Pearson's r from running sums loses digits to cancellation (n*sum(x^2) - sum(x)^2)
                    assert theirs[(ours["kind"], ours["finding"])][key] == pytest.approx(ours[key], abs=1e-6)
        profile = tmp_path / "profile.yaml"
        profile.write_text("gate: {shadow_min_items: 100000}\n")
        shown = CliRunner().invoke(app, ["shadow", "report", "--prometheus", url, "--window", "10m", "--config",
                                         str(profile)])
        assert shown.exit_code == 0, shown.output
        assert "challenger cxrlt-bundle/2 shadowing champion cxrlt-bundle/1" in shown.output
        assert "promotion's shadow requirement: NOT met" in shown.output and "< the 100000 required" in shown.output
        as_json = CliRunner().invoke(app, ["shadow", "report", "--metrics-url",
                                           f"http://{handle.host}:{handle.metrics_port}/metrics", "--json"])
        assert json.loads(as_json.stdout)[0]["items"] == truth["items"]
        none = CliRunner().invoke(app, ["shadow", "report", "--metrics-url",
                                        f"http://{handle.host}:{handle.metrics_port}", "--challenger", "other/9"])
        assert none.exit_code != 0 and "no shadow scoring found of other/9" in none.output
    finally:
        prometheus.stop()
        stop(handle.name, state_dir=tmp_path / "state")


def test_serve_build_shadow_cli_writes_the_challengers_models_and_the_entrys_settings(bundles, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    from typer.testing import CliRunner

    from cxrlt.cli import app

    champion, challenger = bundles
    built = CliRunner().invoke(app, ["serve", "build", "--bundle", str(champion), "--out", str(tmp_path / "repo"),
                                     "--shadow", str(challenger), "--shadow-fraction", "0.25", "--shadow-queue", "3",
                                     "--summary", str(tmp_path / "summary.json")])
    assert built.exit_code == 0, built.output
    assert "shadow-scoring local:challenger on 25% of the items" in built.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "shadow_cxr" in summary["models"] and summary["shadow_version"] == "local:challenger"
    config = text_format.Parse((tmp_path / "repo" / "cxr" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert (params["shadow_model"], params["shadow_fraction"], params["shadow_queue"]) == ("shadow_cxr", "0.25", "3")
    # the two bundles share their preprocessing contracts: the challenger's networks take the champion's images
    assert json.loads(params["shadow_scoring"])["views"]["frontal"]["weights"]["pcam"] == 1.0
    assert (tmp_path / "repo" / "cxr" / "1" / "cxrlt_shadow.py").is_file()
    bad = CliRunner().invoke(app, ["serve", "build", "--bundle", str(champion), "--out", str(tmp_path / "r2"),
                                   "--shadow", str(challenger), "--shadow-fraction", "1.5"])
    assert bad.exit_code != 0 and "shadow_fraction" in bad.output


@pytest.mark.slow
def test_the_dashboards_shadow_panels_read_what_a_shadow_server_serves(shadow_server):
    import re

    from tests.test_monitoring import referenced_metric_names

    handle, _ = shadow_server
    with urllib.request.urlopen(f"http://{handle.host}:{handle.metrics_port}/metrics", timeout=10) as r:
        served = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0) for line in r.read().decode().splitlines()
                  if line and not line.startswith("#")}
    shadow = {m for m in referenced_metric_names() if m.startswith("cxrlt_shadow_")}
    assert shadow == {"cxrlt_shadow_sums_total", "cxrlt_shadow_dropped_total"} and shadow <= served
