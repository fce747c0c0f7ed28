"""``make demo``: the main job on the embedded default, end to end on synthetic data.

Today it runs the data layer (synthesise -> validate -> preprocess -> split) and scores a prevalence baseline, so a
newcomer sees every report format; training, registry and serving steps join as they land.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _cxrlt(*args: str) -> None:
    cmd = [sys.executable, "-m", "cxrlt.cli", *args]
    print("$ cxrlt " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def prevalence_baseline(train_csv: Path, labels_csv: Path, out_csv: Path) -> Path:
    """Predict each class's training prevalence for every image: the floor any model must beat."""
    from cxrlt.data.tables import read_training_csv, write_submission
    from cxrlt.labels import KNOWN_CLASSES

    train = read_training_csv(train_csv)
    ids = pd.read_csv(labels_csv, dtype={"ImageID": str})["ImageID"]
    probs = {c: np.full(len(ids), float(train[c].mean())) for c in KNOWN_CLASSES}
    return write_submission(out_csv, ids, probs, KNOWN_CLASSES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("demo_run"), help="where everything is written")
    parser.add_argument("--n-images", type=int, default=800)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    data, t0 = work / "data", time.time()
    _step("1/5 synthetic CXR-LT dataset (synthetic data, not PadChest)")
    _cxrlt("data", "synth", "--out", str(data), "--n-images", str(args.n_images), "--size", str(args.size),
           "--workers", "2")
    _step("2/5 data validation (great-expectations suite + image checks)")
    _cxrlt("data", "validate", "--data", str(data), "--out", str(work / "validation"), "--min-positives", "0")
    _step("3/5 preprocess cache")
    _cxrlt("data", "preprocess", "--data", str(data), "--out", str(work / "cache"), "--size", "64")
    _step("4/5 patient-disjoint + projection split")
    _cxrlt("data", "split", "--data", str(data), "--out", str(work / "splits"))
    _step("5/5 evaluate the prevalence baseline on the synthetic dev set")
    pred = prevalence_baseline(data / "CXRLT_2026_training.csv", data / "CXRLT_2026_dev_labels.csv",
                               work / "baseline_dev.csv")
    _cxrlt("eval", "--pred", str(pred), "--labels", str(data / "CXRLT_2026_dev_labels.csv"),
           "--train-csv", str(data / "CXRLT_2026_training.csv"), "--out", str(work / "eval_baseline"))
    metrics = json.loads((work / "eval_baseline" / "metrics.json").read_text())
    print(f"\nDone in {time.time() - t0:.0f} s. Prevalence-baseline mAP on synthetic dev: {metrics['mAP']:.3f}")
    print(f"Look at: {work / 'validation' / 'validation.md'}, {work / 'eval_baseline'} (metrics.json, PNG plots)")


if __name__ == "__main__":
    main()
