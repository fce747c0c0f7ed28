"""``make demo``: the whole system on the embedded default, end to end, on synthetic data.

synthesise -> MLflow server -> training pipeline on kfp.local (validate, preprocess, split, members + router +
zero-shot CLIP in parallel, ensemble weights, evaluate, gate, ONNX export, register challenger) -> promote to
champion -> Triton model repository from ``models:/cxrlt-bundle@champion`` -> tritonserver -> PNG and DICOM images
over gRPC -> findings table. Everything it started is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def _step(n: int, total: int, title: str) -> None:
    print(f"\n=== [{n}/{total}] {title}", flush=True)


def _cxrlt(*args: str, env: dict | None = None) -> None:
    print("$ cxrlt " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "cxrlt.cli", *args], check=True, env=env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("demo_run"), help="where everything is written")
    parser.add_argument("--n-images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per ensemble member")
    parser.add_argument("--zeroshot-epochs", type=int, default=6)
    parser.add_argument("--config", type=Path, default=Path("configs/tiny.yaml"))
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    # two pipeline tasks train side by side on 2 cores: one thread each is much faster than two contending
    env = {**os.environ, "CXRLT_STATE_DIR": str(state), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    os.environ.update({k: env[k] for k in ("CXRLT_STATE_DIR", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")})
    from cxrlt import mlflow_server
    from serving import server as triton

    data, t0, total = work / "data", time.time(), 8
    started_mlflow = started_triton = False
    try:
        _step(1, total, "synthetic CXR-LT dataset (synthetic data, not PadChest)")
        if not (data / "CXRLT_2026_training.csv").exists():
            _cxrlt("data", "synth", "--out", str(data), "--n-images", str(args.n_images), "--size", "64",
                   "--workers", "2", env=env)
        _step(2, total, "MLflow server (SQLite + local artifacts, 127.0.0.1)")
        ml = mlflow_server.start(work / "mlflow", port=0, state_dir=state)
        started_mlflow = True
        env["MLFLOW_TRACKING_URI"] = ml["tracking_uri"]
        print(f"MLflow UI: {ml['tracking_uri']}", flush=True)
        _step(3, total, "training pipeline on kfp.local (SubprocessRunner, use_venv=False)")
        _cxrlt("pipeline", "run", "--local", "--data", str(data), "--config", str(args.config.resolve()),
               "--root", str(work / "pipeline"), "--epochs", str(args.epochs), "--zeroshot-epochs",
               str(args.zeroshot_epochs), "--min-map", "0.05", "--max-ece", "0.6", env=env)
        _step(4, total, "promote challenger -> champion (non-inferiority on the dev set)")
        _cxrlt("registry", "promote", "--labels", str(data / "CXRLT_2026_dev_labels.csv"), env=env)
        _step(5, total, "Triton model repository from models:/cxrlt-bundle@champion")
        _cxrlt("serve", "build", "--bundle", "models:/cxrlt-bundle@champion", "--out", str(work / "model_repository"),
               env=env)
        _step(6, total, "tritonserver from the nvidia-pytriton wheel (python backend + ONNX Runtime)")
        handle = triton.start(work / "model_repository", name="demo", http_port=0, grpc_port=0, metrics_port=0,
                              state_dir=state)
        started_triton = True
        print(f"Triton ready: gRPC {handle.grpc_url}, metrics http://{handle.host}:{handle.metrics_port}/metrics")
        _step(7, total, "send PNG and DICOM images over gRPC")
        import cv2
        import pandas as pd

        from cxrlt.data.dicom import array_to_dicom

        ids = pd.read_csv(data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:2].tolist()
        pngs = [data / "images" / i for i in ids]
        dcm = array_to_dicom(cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED), work / "example.dcm", monochrome1=True)
        _cxrlt("infer", *map(str, [*pngs, dcm]), "--url", handle.grpc_url, "--top", "6", "--labels",
               str(data / "CXRLT_2026_test_labels.csv"), env=env)  # truth beside the predictions (synthetic)
        _step(8, total, "done")
        print(f"Finished in {time.time() - t0:.0f} s. Everything above ran on synthetic data.")
        print(f"- pipeline outputs (metrics.json, plots, validation report): {work / 'pipeline'}")
        print(f"- MLflow database and artifacts: {work / 'mlflow'} (`cxrlt mlflow up --data {work / 'mlflow'}` "
              "to browse the UI again)")
        print(f"- model repository: {work / 'model_repository'}")
    finally:
        if started_triton:
            triton.stop("demo", state_dir=state)
        if started_mlflow:
            mlflow_server.stop(state_dir=state)
        print("stopped the servers this demo started", flush=True)


if __name__ == "__main__":
    main()
