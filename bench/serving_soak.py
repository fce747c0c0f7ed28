"""Soak: a served bundle under a mixed hospital stream for minutes at a fixed concurrency.

The stream: valid PNGs and the same images as DICOM (MONOCHROME1), every refusal kind of `serving/refusals.py`
(non-radiograph modalities, colour, other containers, bombs, NaN, bad shapes ...), two-item requests mixing a good
and a bad item, and one oversize image per minute. The server is started the way `cxrlt serve up` starts it.

Checked, and printed at the end:
- wrong answers: a valid image whose probabilities differ from its reference (its first answer, before the load)
  by more than 1e-5 (DICOM: its PNG's reference, 2e-3 for the DICOM rescale), or a bad input not refused with its
  reason; a good item of a mixed request not answered;
- server restarts: the tritonserver PID and start time are unchanged and the server is ready at the end;
- resident memory (tritonserver + its python-backend stubs, from /proc) sampled every 5 s: growth from the end of
  the warm-up (first minute) to the end of the run, and the peak.

Usage: python bench/serving_soak.py --ensemble DIR --zeroshot DIR --images DIR [--minutes 10] [--concurrency 16]
           [--out soak.json]

--observed: what watching the model costs, side by side in one run. Two servers of the same bundle run at once: a
plain one (no entry metrics, no shadow) and an observed one (the entry's metrics, and shadow scoring of the
challenger given by --shadow-ensemble/--shadow-zeroshot, default the bundle itself, on --shadow-fraction of the
items). The same stream goes to each in turn, in phases of --phase-minutes (plain, observed, observed, plain, ...,
so that drift of the machine falls on both); printed: requests/s per phase, the ratio of the sides' totals, the
observed server's memory after its warm-up and at the end, and the shadow counters. With --panels DIR, a real
Prometheus (Debian `prometheus`) scrapes the observed server every 5 s with the alert and recording rules of
infra/base/monitoring/, and every panel of the Grafana dashboard is drawn from its queries over the run
(one PNG per dashboard row).

Exit status 1 when any check fails (--observed: also a throughput cost above 10 % or memory growth of 10 % or more).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from cxrlt.data.dicom import array_to_dicom
from cxrlt.export import export_bundle
from cxrlt.ops.procs import same_process
from serving.refusals import oversize_png, png_bytes, refusal_cases
from serving.repository import build_repository
from serving.server import start, stop

OUTPUTS = ("KNOWN_PROBS", "UNSEEN_PROBS", "ERROR")


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Triton's python-backend stubs are its children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class Soak:
    def __init__(self, url: str, valid: dict[str, bytes], dicoms: dict[str, bytes], refusals: dict):
        import tritonclient.grpc as grpcclient

        self.grpc, self.url = grpcclient, url
        self.valid, self.dicoms, self.refusals = valid, dicoms, refusals
        self.reference: dict[str, np.ndarray] = {}
        self.counts = {"valid": 0, "dicom": 0, "refused": 0, "mixed": 0, "oversize": 0, "overloaded": 0}
        self.wrong: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _infer(self, client, inputs):
        tensors = []
        for name, arr, dtype in inputs:
            tensors.append(self.grpc.InferInput(name, list(arr.shape), dtype))
            tensors[-1].set_data_from_numpy(arr)
        response = client.infer("cxr", tensors, outputs=[self.grpc.InferRequestedOutput(o) for o in OUTPUTS],
                                client_timeout=120)
        probs = np.concatenate([response.as_numpy("KNOWN_PROBS"), response.as_numpy("UNSEEN_PROBS")], axis=1)
        return probs, [e[0].decode() for e in response.as_numpy("ERROR")]

    @staticmethod
    def _image(payload: bytes):
        return [("IMAGE", np.array([[payload]], dtype=np.object_), "BYTES")]

    def _wrong(self, what: str) -> None:
        with self.lock:
            self.wrong.append(what)

    def references(self, client) -> None:
        for name, payload in self.valid.items():
            self.reference[name] = self._infer(client, self._image(payload))[0][0]

    def one(self, client, rng: random.Random) -> None:
        from tritonclient.utils import InferenceServerException

        draw = rng.random()
        if draw < 0.6:
            kind, name = "valid", rng.choice(list(self.valid))
            inputs, tol = self._image(self.valid[name]), 1e-5
        elif draw < 0.75:
            kind, name = "dicom", rng.choice(list(self.dicoms))
            inputs, tol = self._image(self.dicoms[name]), 2e-3
        elif draw < 0.9:
            kind, name = "refused", rng.choice(list(self.refusals))
        else:
            kind, name = "mixed", rng.choice(list(self.valid))
        try:
            if kind in ("valid", "dicom"):
                probs, errors = self._infer(client, inputs)
                if errors[0] or np.abs(probs[0] - self.reference[name]).max() > tol:
                    self._wrong(f"{kind} {name}: {errors[0] or 'probabilities differ from the reference'}")
            elif kind == "mixed":
                arr = np.array([[self.valid[name]], [b"not an image"]], dtype=np.object_)
                probs, errors = self._infer(client, [("IMAGE", arr, "BYTES")])
                if errors[0] or "not a PNG or DICOM" not in errors[1] or \
                        np.abs(probs[0] - self.reference[name]).max() > 1e-5:
                    self._wrong(f"mixed {name}: {errors}")
            else:
                inputs, fragment = self.refusals[name]
                try:
                    self._infer(client, inputs)
                    self._wrong(f"refusal {name}: answered")
                except InferenceServerException as exc:
                    if "UNAVAILABLE" in str(exc.status()):
                        raise
                    if fragment.lower() not in str(exc).lower():
                        self._wrong(f"refusal {name}: {exc}")
        except InferenceServerException as exc:
            if "UNAVAILABLE" in str(exc.status()):  # refused by the bounded queue: counted, not wrong
                kind = "overloaded"
            else:
                self._wrong(f"{kind} {name}: {exc}")
        with self.lock:
            self.counts[kind] += 1

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        client = self.grpc.InferenceServerClient(self.url)
        try:
            while not self.stop.is_set():
                self.one(client, rng)
        finally:
            client.close()

    def oversize(self, client) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            self._infer(client, self._image(oversize_png()))
            self._wrong("oversize: answered")
        except InferenceServerException as exc:
            if "per side" not in str(exc):
                self._wrong(f"oversize: {exc}")
        with self.lock:
            self.counts["oversize"] += 1


def _run_phase(soak: Soak, concurrency: int, seconds: float, seed: int) -> int:
    """``seconds`` of the stream at ``concurrency``; returns the requests answered (refusals included)."""
    before = sum(soak.counts.values())
    soak.stop.clear()
    threads = [threading.Thread(target=soak.worker, args=(seed + i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    soak.stop.set()
    for t in threads:
        t.join()
    return sum(soak.counts.values()) - before


MONITORING = Path(__file__).resolve().parent.parent / "infra" / "base" / "monitoring"


def render_dashboard(url: str, start: float, end: float, out: Path, finding: str = "cardiomegaly") -> list[Path]:
    """Every panel of the Grafana dashboard, drawn from its own queries against Prometheus over [start, end]
    (``$finding`` set to ``finding``): one PNG per dashboard row; returns their paths."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import requests

    panels = json.loads((MONITORING / "grafana-dashboard.json").read_text())["panels"]
    rows: list[tuple[str, list[dict]]] = []
    for panel in panels:
        if panel["type"] == "row":
            rows.append((panel["title"], []))
        elif rows:
            rows[-1][1].append(panel)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    step = max(5.0, (end - start) / 200)
    for title, members in rows:
        fig, axes = plt.subplots(1, len(members), figsize=(5.2 * len(members), 3.8), squeeze=False)
        for ax, panel in zip(axes[0], members, strict=True):
            for target in panel["targets"]:
                expr = target["expr"].replace("$finding", finding)
                if panel["type"] == "heatmap":  # the last hour's bucket counts at the end, as one column of it
                    reply = requests.get(f"{url}/api/v1/query", params={"query": expr, "time": end}, timeout=30)
                    cumulative = sorted((float(r["metric"]["le"]), float(r["value"][1]))
                                        for r in reply.json()["data"]["result"])
                    counts = [c - (cumulative[i - 1][1] if i else 0.0) for i, (_, c) in enumerate(cumulative)]
                    ax.bar(range(len(counts)), counts, color="tab:blue")
                    ax.set_xticks(range(len(counts)), [f"{le:g}" for le, _ in cumulative], rotation=90, fontsize=7)
                    ax.set_xlabel("score bucket (le)")
                    continue
                reply = requests.get(f"{url}/api/v1/query_range", params={
                    "query": expr, "start": start, "end": end, "step": step}, timeout=30).json()
                if reply.get("status") != "success":
                    raise SystemExit(f"Prometheus refused {expr!r}: {reply.get('error')}")
                result = reply["data"]["result"]
                if len(result) > 6:  # a readable legend: the six series with the largest mean
                    result = sorted(result, key=lambda r: -np.mean([float(v[1]) for v in r["values"]]))[:6]
                    ax.text(0.01, 0.98, "6 largest shown", transform=ax.transAxes, fontsize=6, va="top")
                for series in result:
                    t = [(float(v[0]) - start) / 60 for v in series["values"]]
                    labels = series["metric"]
                    legend = re.sub(r"\{\{(\w+)\}\}", lambda m, labels=labels: labels.get(m.group(1), ""),
                                    target.get("legendFormat", "")) or expr[:40]
                    ax.plot(t, [float(v[1]) for v in series["values"]], label=legend)
                ax.set_xlabel("minutes into the soak")
            ax.set_title(panel["title"].replace("$finding", finding), fontsize=9)
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="best")
        fig.suptitle(f"{title} (Prometheus scraping the soak's observed server; synthetic data)", fontsize=10)
        fig.tight_layout()
        path = out / f"dashboard_{re.sub(r'[^a-z]+', '_', title.lower()).strip('_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def observed_main(args, valid: dict, dicoms: dict, tmp: Path) -> None:
    """--observed: the plain and the observed server side by side (see the module docstring)."""
    from cxrlt.ops.shadow import from_metrics
    from serving.repository import ServingOptions

    export_bundle(args.ensemble, args.zeroshot, tmp / "bundle")
    shadow = tmp / "bundle"
    if args.shadow_ensemble:
        export_bundle(args.shadow_ensemble, args.shadow_zeroshot or args.zeroshot, tmp / "shadow")
        shadow = tmp / "shadow"
    build_repository(tmp / "bundle", tmp / "plain", ServingOptions(entry_metrics=False), "champion")
    build_repository(tmp / "bundle", tmp / "observed", ServingOptions(shadow_fraction=args.shadow_fraction),
                     "champion", shadow_dir=shadow, shadow_version="challenger")
    servers = {side: start(tmp / side, name=f"soak-{side}", http_port=0, grpc_port=0, metrics_port=0,
                           state_dir=tmp / "state") for side in ("plain", "observed")}
    prometheus = None
    try:
        soaks = {side: Soak(h.grpc_url, valid, dicoms, refusal_cases()) for side, h in servers.items()}
        clients = {side: soak.grpc.InferenceServerClient(servers[side].grpc_url) for side, soak in soaks.items()}
        for side, soak in soaks.items():
            soak.references(clients[side])
        if args.panels:
            observed = servers["observed"]
            import yaml

            from cxrlt.ops import prometheus_server

            rules = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
            prometheus = prometheus_server.start(tmp / "prometheus", [f"{observed.host}:{observed.metrics_port}"],
                                                 "5s", rules)
        began = time.time()
        for side in soaks:  # warm-up, not measured
            _run_phase(soaks[side], args.concurrency, args.warmup_minutes * 60, 0)
        rss_warm = _tree_rss(servers["observed"].pid)
        order = [s for k in range(args.phases) for s in (("plain", "observed") if k % 2 == 0 else
                                                         ("observed", "plain"))]
        done = {"plain": 0, "observed": 0}
        seconds = {"plain": 0.0, "observed": 0.0}
        rss = []
        for k, side in enumerate(order):
            t0 = time.time()
            n = _run_phase(soaks[side], args.concurrency, args.phase_minutes * 60, 1000 * (k + 1))
            done[side] += n
            seconds[side] += time.time() - t0
            if side == "observed":
                rss.append(_tree_rss(servers[side].pid))
            print(f"phase {k + 1:>2} {side:>8}: {n / (time.time() - t0):7.2f} requests/s, wrong so far "
                  f"{sum(len(s.wrong) for s in soaks.values())}, observed server RSS "
                  f"{_tree_rss(servers['observed'].pid) / 2**20:.0f} MiB", flush=True)
        time.sleep(6)  # the last shadow calls finish and Prometheus scrapes them
        ended = time.time()
        agreement = from_metrics(f"http://{servers['observed'].host}:{servers['observed'].metrics_port}")
        ready = all(same_process(h.pid, h.start_time) and clients[s].is_server_ready() for s, h in servers.items())
        panels = render_dashboard(prometheus.url, began, ended, args.panels) if prometheus else []
    finally:
        if prometheus:
            prometheus.stop()
        for side in servers:
            stop(f"soak-{side}", state_dir=tmp / "state")
    rate = {side: done[side] / seconds[side] for side in done}
    pair = agreement.get(("champion", "challenger"), {})
    summary = {"phases_per_side": args.phases, "phase_minutes": args.phase_minutes, "concurrency": args.concurrency,
               "shadow_fraction": args.shadow_fraction, "requests_per_s": {k: round(v, 2) for k, v in rate.items()},
               "ratio_observed_over_plain": round(rate["observed"] / rate["plain"], 4),
               "wrong_answers": {side: len(s.wrong) for side, s in soaks.items()},
               "wrong_examples": [w for s in soaks.values() for w in s.wrong[:5]],
               "server_restarts": 0 if ready else 1,
               "observed_rss_after_warmup_mib": round(rss_warm / 2**20),
               "observed_rss_after_each_phase_mib": [round(r / 2**20) for r in rss],
               "observed_rss_growth": round(rss[-1] / rss_warm - 1, 4),
               "shadow_items_compared": pair.get("items"), "shadow_dropped": pair.get("dropped"),
               "shadow_worst_flip_rate": pair.get("worst_flip_rate"),
               "shadow_lowest_correlation": pair.get("lowest_correlation"),
               "panels": [str(p) for p in panels]}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    ok = (not any(s.wrong for s in soaks.values()) and ready and rate["observed"] / rate["plain"] >= 0.9
          and rss[-1] / rss_warm - 1 < 0.10 and (pair.get("items") or 0) > 0)
    print("PASS" if ok else "FAIL", "(0 wrong answers, no restart, observed/plain throughput >= 0.90, observed RSS "
          "growth after warm-up < 10 %, shadow items compared)")
    raise SystemExit(0 if ok else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ensemble", type=Path, required=True)
    ap.add_argument("--zeroshot", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="folder of PNG files (16-bit synthetic radiographs)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup-minutes", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--n-images", type=int, default=24)
    ap.add_argument("--out", type=Path, default=None, help="also write the summary as JSON here")
    ap.add_argument("--observed", action="store_true", help="plain vs observed (metrics + shadow) side by side")
    ap.add_argument("--phases", type=int, default=4, help="--observed: phases per side")
    ap.add_argument("--phase-minutes", type=float, default=1.0, help="--observed: minutes per phase")
    ap.add_argument("--shadow-ensemble", type=Path, default=None, help="--observed: the challenger's ensemble")
    ap.add_argument("--shadow-zeroshot", type=Path, default=None, help="--observed: the challenger's zero-shot model")
    ap.add_argument("--shadow-fraction", type=float, default=0.1)
    ap.add_argument("--panels", type=Path, default=None, help="--observed: draw the dashboard's panels here")
    args = ap.parse_args()
    paths = sorted(args.images.glob("*.png"))[: args.n_images]
    tmp = Path(tempfile.mkdtemp(prefix="cxrlt-soak-"))
    valid = {p.name: p.read_bytes() for p in paths}
    valid["noise-8bit.png"] = png_bytes((300, 200), np.uint8, seed=5)
    dicoms = {}
    for p in paths[:6]:
        arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        dicoms[p.name] = array_to_dicom(arr, tmp / f"{p.stem}.dcm", monochrome1=True).read_bytes()
    if args.observed:
        return observed_main(args, valid, dicoms, tmp)
    export_bundle(args.ensemble, args.zeroshot, tmp / "bundle")
    build_repository(tmp / "bundle", tmp / "repo")
    server = start(tmp / "repo", name="soak", http_port=0, grpc_port=0, metrics_port=0, state_dir=tmp / "state")
    soak = Soak(server.grpc_url, valid, dicoms, refusal_cases())
    samples: list[tuple[float, int]] = []
    try:
        client = soak.grpc.InferenceServerClient(server.grpc_url)
        soak.references(client)
        start_time = time.time()
        threads = [threading.Thread(target=soak.worker, args=(i,), daemon=True) for i in range(args.concurrency)]
        for t in threads:
            t.start()
        next_oversize = start_time
        while (elapsed := time.time() - start_time) < args.minutes * 60:
            samples.append((elapsed, _tree_rss(server.pid)))
            if time.time() >= next_oversize:
                soak.oversize(client)
                next_oversize += 60
            done = sum(v for k, v in soak.counts.items())
            print(f"\r{elapsed / 60:5.1f} min  {done} requests  {len(soak.wrong)} wrong  "
                  f"RSS {samples[-1][1] / 2**20:7.0f} MiB", end="", flush=True)
            time.sleep(5)
        soak.stop.set()
        for t in threads:
            t.join()
        print()
        ready = same_process(server.pid, server.start_time) and client.is_server_ready()
        client.close()
    finally:
        stop("soak", state_dir=tmp / "state")
    warm = [rss for t, rss in samples if t >= args.warmup_minutes * 60]
    base, end, peak = warm[0], warm[-1], max(warm)
    total = sum(soak.counts.values())
    summary = {"minutes": args.minutes, "concurrency": args.concurrency, "requests": total,
               "requests_per_s": round(total / (args.minutes * 60), 1), "counts": soak.counts,
               "wrong_answers": len(soak.wrong), "wrong_examples": soak.wrong[:10],
               "server_restarts": 0 if ready else 1, "rss_after_warmup_mib": round(base / 2**20),
               "rss_end_mib": round(end / 2**20), "rss_peak_mib": round(peak / 2**20),
               "rss_growth_after_warmup": round(end / base - 1, 4),
               "rss_peak_over_warmup": round(peak / base - 1, 4)}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    ok = not soak.wrong and ready and end / base - 1 < 0.10
    print("PASS" if ok else "FAIL", "(0 wrong answers, no restart, RSS growth after warm-up < 10 %)")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
