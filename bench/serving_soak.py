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
Exit status 1 when any check fails.
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
    args = ap.parse_args()
    paths = sorted(args.images.glob("*.png"))[: args.n_images]
    tmp = Path(tempfile.mkdtemp(prefix="cxrlt-soak-"))
    valid = {p.name: p.read_bytes() for p in paths}
    valid["noise-8bit.png"] = png_bytes((300, 200), np.uint8, seed=5)
    dicoms = {}
    for p in paths[:6]:
        arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        dicoms[p.name] = array_to_dicom(arr, tmp / f"{p.stem}.dcm", monochrome1=True).read_bytes()
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
