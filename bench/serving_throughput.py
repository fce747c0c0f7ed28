"""Benchmark: the served `cxr` model over gRPC at several concurrencies vs the eager in-process PyTorch pipeline.

Same images, same run: prints images/s and p50/p99 latency per concurrency, the ratio to in-process PyTorch, and the
server's own per-model compute time (from Triton's statistics) so the cost of preprocessing, BLS and gRPC is
visible. Trains nothing: pass an ensemble + zero-shot model (e.g. from `cxrlt report task1/task2` work dirs).
Usage: python bench/serving_throughput.py --ensemble DIR --zeroshot DIR --images DIR [--n 64] [--concurrency 1 4 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cxrlt.export import export_bundle
from cxrlt.inference import EnsemblePredictor
from serving.client import CXRClient
from serving.repository import build_repository
from serving.server import start, stop


def _load(server, payloads, concurrency):
    latencies = []

    def one(p):
        client = CXRClient(server.grpc_url, batch_size=1)
        try:
            t0 = time.perf_counter()
            client.infer_bytes([p])
            return time.perf_counter() - t0
        finally:
            client.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, payloads))
    wall = time.perf_counter() - t0
    return len(payloads) / wall, np.percentile(latencies, 50) * 1e3, np.percentile(latencies, 99) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ensemble", type=Path, required=True)
    ap.add_argument("--zeroshot", type=Path, default=None)
    ap.add_argument("--images", type=Path, required=True, help="folder of PNG files")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    args = ap.parse_args()
    paths = sorted(args.images.glob("*.png"))[: args.n]
    payloads = [p.read_bytes() for p in paths]
    predictor = EnsemblePredictor(args.ensemble)
    predictor.predict_files(paths[:2])
    t0 = time.perf_counter()
    for p in paths:
        predictor.predict_files([p])
    eager = len(paths) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        export_bundle(args.ensemble, args.zeroshot, Path(tmp) / "bundle")
        build_repository(Path(tmp) / "bundle", Path(tmp) / "repo")
        server = start(Path(tmp) / "repo", name="bench", http_port=0, grpc_port=0, metrics_port=0,
                       state_dir=Path(tmp) / "state")
        try:
            _load(server, payloads[:4], 1)  # warm-up
            print(f"synthetic images: {len(paths)}; eager in-process PyTorch (Task 1 only, batch 1): {eager:.1f} img/s")
            for c in args.concurrency:
                rate, p50, p99 = _load(server, payloads, c)
                print(f"gRPC cxr  concurrency {c:>2}: {rate:7.1f} img/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                      f"ratio to eager {rate / eager:.2f}")
            import tritonclient.grpc as grpcclient

            stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(as_json=True)
            print("server compute time per model (mean per execution):")
            for m in stats.get("model_stats", []):
                n = int(m["inference_stats"]["success"].get("count", 0) or 0)
                if n:
                    ns = int(m["inference_stats"]["compute_infer"]["ns"])
                    print(f"  {m['name']:<20} {ns / n / 1e6:8.2f} ms  ({n} requests)")
        finally:
            stop("bench", state_dir=Path(tmp) / "state")


if __name__ == "__main__":
    main()
