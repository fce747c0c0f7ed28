"""Benchmark: what the cxr entry's Prometheus metrics cost, side by side in one run.

Two model repositories of the same bundle, one with the entry's metrics (the default) and one without
(`serve build --no-entry-metrics`), both served by the real tritonserver at once and loaded in turn, rounds
alternating (on, off, on, off ...) so that drift of the machine falls on both. Every round sends the same
single-image gRPC requests at one concurrency; printed: images/s per round, the median of each side, their ratio,
and the resident memory of the server with metrics (tritonserver + its python-backend stubs) after each of its
rounds, which should stay flat.

Trains nothing: pass an ensemble + zero-shot model (e.g. a `make demo` run's fit-ensemble/ensemble and
train-zeroshot/model).
Usage: python bench/entry_metrics_cost.py --ensemble DIR --zeroshot DIR --images DIR [--n 96] [--concurrency 8]
           [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from serving_soak import _tree_rss
from serving_throughput import _load

from cxrlt.export import export_bundle
from serving.repository import ServingOptions, build_repository
from serving.server import start, stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ensemble", type=Path, required=True)
    ap.add_argument("--zeroshot", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="folder of PNG files")
    ap.add_argument("--n", type=int, default=96, help="requests per round")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per side")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    paths = sorted(args.images.glob("*.png"))[: args.n]
    payloads = [p.read_bytes() for p in paths]
    rates: dict[str, list[float]] = {"on": [], "off": []}
    memory: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_bundle(args.ensemble, args.zeroshot, root / "bundle")
        for side in rates:
            build_repository(root / "bundle", root / side, ServingOptions(entry_metrics=side == "on"))
        handles = {side: start(root / side, name=f"metrics-cost-{side}", http_port=0, grpc_port=0, metrics_port=0,
                               state_dir=root / "state") for side in rates}
        try:
            for handle in handles.values():  # warm-up: first-call allocations are not part of the rounds
                _load(handle.grpc_url, payloads[: max(8, args.concurrency)], args.concurrency)
            for r in range(args.rounds):
                for side, handle in handles.items():
                    rate, p50, p99, failed = _load(handle.grpc_url, payloads, args.concurrency)
                    if failed:
                        raise SystemExit(f"round {r + 1}, metrics {side}: {failed} requests failed")
                    rates[side].append(rate)
                    if side == "on":
                        memory.append(_tree_rss(handle.pid))
                    print(f"round {r + 1}, metrics {side:>3}: {rate:6.2f} images/s, p50 {p50:6.1f} ms, "
                          f"p99 {p99:6.1f} ms", flush=True)
        finally:
            for side in handles:
                stop(f"metrics-cost-{side}", state_dir=root / "state")
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    result = {"images_per_s_with_metrics": on, "images_per_s_without": off, "ratio": on / off,
              "rounds": args.rounds, "requests_per_round": len(payloads), "concurrency": args.concurrency,
              "server_rss_mb_with_metrics": [m / 2**20 for m in memory]}
    print(f"\nwith metrics {on:.2f} images/s, without {off:.2f}: ratio {on / off:.3f} "
          f"(cost {100 * (1 - on / off):+.1f} %); server memory with metrics after each round (MB): "
          f"{', '.join(f'{m / 2**20:.0f}' for m in memory)}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
