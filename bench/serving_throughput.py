"""Benchmark: the served `cxr` model over gRPC vs the eager in-process PyTorch pipeline, Task 1 + zero-shot on both.

Same images, same models, one run. Eager: `EnsemblePredictor` (router -> view ensemble, calibration) and the CLIP
image tower against the exported prompt embeddings, one image at a time (as requests arrive) and, for reference, in
batches of 8. Served: single-image gRPC requests at each concurrency, images/s and p50/p99 latency, the ratio to
eager, and the server's own per-model compute time (Triton statistics, diffed around the concurrency-1 run) so the
overhead of preprocessing + BLS + gRPC over the networks is visible:

    overhead = client p50 at concurrency 1 / (sum over models of mean compute per request) - 1

Trains nothing: pass an ensemble + zero-shot model (e.g. a `make demo` pipeline run's fit-ensemble/ensemble and
train-zeroshot/model). Serving options (instances, threads, batching) as `cxrlt serve build` takes them.
Usage: python bench/serving_throughput.py --ensemble DIR --zeroshot DIR --images DIR [--n 96]
           [--concurrency 1 4 8 16] [--instances N] [--ort-threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cxrlt.data.images import load_preprocessed
from cxrlt.export import export_bundle
from cxrlt.inference import EnsemblePredictor
from cxrlt.zeroshot.predict import ZeroShotPredictor
from serving.client import CXRClient
from serving.repository import ServingOptions, build_repository
from serving.server import start, stop

ENTRY_AND_ENSEMBLES = ("cxr", "zeroshot")


def _load(url: str, payloads: list[bytes], concurrency: int) -> tuple[float, float, float, int]:
    """Send every payload as its own request from ``concurrency`` threads: images/s, p50, p99 (ms), failures."""
    clients = [CXRClient(url, batch_size=1) for _ in range(concurrency)]

    def one(k: int) -> tuple[float, bool]:
        t0 = time.perf_counter()
        result = clients[k % concurrency].infer_bytes([payloads[k]])[0]
        return time.perf_counter() - t0, result.error == ""

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(len(payloads))))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    latencies = np.array([t for t, _ in outcomes])
    return (len(payloads) / wall, float(np.percentile(latencies, 50) * 1e3), float(np.percentile(latencies, 99) * 1e3),
            sum(not ok for _, ok in outcomes))


def _stats(url: str) -> dict[str, tuple[int, int]]:
    """Per model: (successful requests, compute ns = input + infer + output)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    out = {}
    for m in client.get_inference_statistics(as_json=True).get("model_stats", []):
        s = m["inference_stats"]
        ns = sum(int(s[k].get("ns", 0) or 0) for k in ("compute_input", "compute_infer", "compute_output"))
        out[m["name"]] = (int(s["success"].get("count", 0) or 0), ns)
    client.close()
    return out


class Eager:
    """The in-process reference: Task 1 ensemble + CLIP image tower scored against the served prompt embeddings."""

    def __init__(self, ensemble: Path, zeroshot: Path, bundle: Path):
        self.task1 = EnsemblePredictor(ensemble)
        self.zs = ZeroShotPredictor(zeroshot)
        self.text = torch.from_numpy(np.load(bundle / "zeroshot" / "text_embeddings.npy")).float()
        scoring = json.loads((bundle / "zeroshot" / "text_classes.json").read_text())
        self.a, self.b = float(scoring["a"]), float(scoring["b"])

    @torch.no_grad()
    def __call__(self, paths: list[Path]) -> None:
        self.task1.predict_files(paths)
        images = np.stack([load_preprocessed(p, self.zs.preprocess) for p in paths])
        torch.sigmoid(self.a * self.zs.image_embeddings(images) @ self.text.T + self.b)

    def rate(self, paths: list[Path], batch: int) -> float:
        self(paths[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(paths), batch):
            self(paths[i : i + batch])
        return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ensemble", type=Path, required=True)
    ap.add_argument("--zeroshot", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="folder of PNG files")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--instances", type=int, default=None)
    ap.add_argument("--ort-threads", type=int, default=1)
    args = ap.parse_args()
    paths = sorted(args.images.glob("*.png"))[: args.n]
    payloads = [p.read_bytes() for p in paths]
    options = ServingOptions(ort_threads=args.ort_threads, **({"instances": args.instances} if args.instances else {}))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export_bundle(args.ensemble, args.zeroshot, bundle)
        eager = Eager(args.ensemble, args.zeroshot, bundle)
        eager_1, eager_8 = eager.rate(paths, 1), eager.rate(paths, 8)
        del eager
        summary = build_repository(bundle, Path(tmp) / "repo", options)
        server = start(Path(tmp) / "repo", name="bench", http_port=0, grpc_port=0, metrics_port=0,
                       state_dir=Path(tmp) / "state")
        try:
            _load(server.grpc_url, payloads[:8], 2)  # warm-up
            print(f"synthetic images: {len(paths)}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
                  f"serving: {options.instances} instance(s) x {options.ort_threads} ORT thread(s), "
                  f"shared trunk in {[m for m in summary['models'] if m.endswith('_trunk')] or 'no view'}")
            print(f"eager PyTorch, Task 1 + zero-shot: batch 1 {eager_1:.1f} img/s, batch 8 {eager_8:.1f} img/s")
            for c in args.concurrency:
                before = _stats(server.grpc_url) if c == 1 else None
                rate, p50, p99, failed = _load(server.grpc_url, payloads, c)
                print(f"gRPC cxr concurrency {c:>2}: {rate:6.1f} img/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                      f"ratio to eager batch 1 {rate / eager_1:.2f}, to eager batch 8 {rate / eager_8:.2f}"
                      f"{f'  ({failed} failed)' if failed else ''}")
                if before is not None:
                    after = _stats(server.grpc_url)
                    per_model = {m: (after[m][1] - before.get(m, (0, 0))[1]) / len(payloads) / 1e6 for m in after
                                 if m not in ENTRY_AND_ENSEMBLES and not m.endswith("_ensemble")
                                 and after[m][0] > before.get(m, (0, 0))[0]}
                    compute = sum(per_model.values())
                    print("  server compute per request at concurrency 1 (ms): "
                          + ", ".join(f"{m} {v:.2f}" for m, v in sorted(per_model.items(), key=lambda kv: -kv[1])))
                    print(f"  sum {compute:.1f} ms; client p50 {p50:.1f} ms; overhead {p50 / compute - 1:+.0%} "
                          "(preprocess is counted as compute; zero-shot runs beside Task 1, so the sum can exceed "
                          "the latency)")
        finally:
            stop("bench", state_dir=Path(tmp) / "state")


if __name__ == "__main__":
    main()
