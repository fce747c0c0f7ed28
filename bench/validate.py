"""Benchmark: great-expectations validation of a 100k-row training CSV (target: seconds, not minutes).

Prints the time for the suite alone and for the header-only image checks of the same number of files.
Usage: python bench/validate.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.data.validate import check_images, validate_training_frame
from cxrlt.labels import KNOWN_CLASSES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"ImageID": [f"{i:012d}.png" for i in range(args.rows)], "StudyDate_DICOM": "20150101",
                       "PatientID": [str(i // 3) for i in range(args.rows)]})
    for c in KNOWN_CLASSES:
        df[c] = (rng.random(args.rows) < 0.05).astype(np.int8)
    t0 = time.perf_counter()
    failures, _ = validate_training_frame(df, min_positives=1)
    t_suite = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(__file__).with_name("_tiny.png")
        import cv2

        cv2.imwrite(str(png), np.zeros((64, 64), np.uint16))
        data = png.read_bytes()
        png.unlink()
        n_files = min(args.rows, 20_000)
        for i in range(n_files):
            Path(tmp, df["ImageID"][i]).write_bytes(data)
        t0 = time.perf_counter()
        check_images(df["ImageID"][:n_files], tmp, mode="header")
        t_img = time.perf_counter() - t0
    print(f"suite on {args.rows} rows: {t_suite:.2f} s ({len(failures)} failures)")
    print(f"header checks: {n_files / t_img:.0f} files/s -> {args.rows / (n_files / t_img):.1f} s for {args.rows}")


if __name__ == "__main__":
    main()
