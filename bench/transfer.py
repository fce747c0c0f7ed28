"""Benchmark: does a pretrained starting point help? Random init vs weights from a member trained elsewhere.

Trains ``mixed/pcam`` (tiny profile) on synthetic dataset A and logs its ``best.pt`` to MLflow (a local SQLite
tracking store in a temporary folder). The artifact URI ``runs:/<run>/weights/best.pt`` is then the ``pretrained``
weight of the same member on synthetic dataset B (another generator seed), compared with random initialisation after
the same number of epochs, side by side, per training seed.
All numbers are synthetic-data numbers. Usage:
    python bench/transfer.py [--images 800] [--epochs-source 6] [--epochs 3] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import yaml

from cxrlt.data.synth import SynthConfig, generate
from cxrlt.training.trainer import TrainRequest, train_member

ROOT = Path(__file__).resolve().parents[1]


def _train(cfg: dict, data: Path, out: Path, epochs: int) -> dict:
    return train_member(TrainRequest("mixed/pcam", cfg, data, out, epochs=epochs, progress=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--epochs-source", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    base = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, seed in (("A", 0), ("B", 1)):
            generate(tmp / name, SynthConfig(n_images=args.images, size=128, seed=seed, workers=2), progress=False)
        source = _train(base, tmp / "A", tmp / "source", args.epochs_source)
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")  # exported: the trainings log there too
        mlflow.set_experiment("transfer-bench")
        with mlflow.start_run(run_name="source-mixed-pcam") as run:
            mlflow.log_artifact(str(tmp / "source" / "best.pt"), artifact_path="weights")
        weights_uri = f"runs:/{run.info.run_id}/weights/best.pt"
        print(f"source: mixed/pcam on dataset A (seed 0), {args.epochs_source} epochs, val mAP "
              f"{source['best_val_score']:.4f}, logged as {weights_uri}")
        rows = []
        for seed in args.seeds:
            scores = {}
            for init in ("random", "pretrained"):
                cfg = copy.deepcopy(base)
                cfg["train"]["seed"] = seed
                if init == "pretrained":
                    cfg["models"]["pcam"]["pretrained"] = weights_uri
                card = _train(cfg, tmp / "B", tmp / f"{init}-{seed}", args.epochs)
                scores[init] = [h["val_score"] for h in card["history"]]
                assert (card["pretrained"] is not None) == (init == "pretrained")
            rows.append(scores)
            print(f"seed {seed}: val mAP per epoch  random {np.round(scores['random'], 4).tolist()}  "
                  f"pretrained {np.round(scores['pretrained'], 4).tolist()}")
        final = {k: np.array([r[k][-1] for r in rows]) for k in ("random", "pretrained")}
        print(f"dataset B (seed 1), {args.images} synthetic images, {args.epochs} epochs, {len(rows)} training seeds:")
        print(f"  random init   val mAP {final['random'].mean():.4f} +- {final['random'].std():.4f}")
        print(f"  pretrained    val mAP {final['pretrained'].mean():.4f} +- {final['pretrained'].std():.4f}")
        print(f"  ratio pretrained / random: {final['pretrained'].mean() / final['random'].mean():.2f}; "
              f"pretrained better in {(final['pretrained'] > final['random']).sum()}/{len(rows)} seeds")


if __name__ == "__main__":
    main()
