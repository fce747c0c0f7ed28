"""Task 1 commands: ``cxrlt train``, ``cxrlt predict`` and ``cxrlt eval``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import DataDir, Split, _image_inputs, app


@app.command("train")
def train_cmd(
    member: Annotated[str, typer.Option(help="router, or <view>/<kind> with view frontal|lateral|mixed and kind "
                                             "pcam|swin|cait (e.g. frontal/pcam).")],
    config: Annotated[Path, typer.Option(help="Profile YAML (configs/tiny.yaml, configs/paper.yaml).")],
    data: DataDir,
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, member.json, val_logits.csv).")],
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt if it exists.")] = False,
    pcam_checkpoint: Annotated[Path | None,
                               typer.Option(help="cait only: best.pt of the same view's pcam member.")] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocess cache directory (cxrlt data preprocess).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the profile's epoch count.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Manifests from `cxrlt data split` (its removal list and label "
                                                     "source apply); default: split DATA here, nothing removed.")
                      ] = None,
) -> None:
    """Train the router or one ensemble member (plain process, or under torchrun --nproc_per_node N)."""
    from cxrlt.training.trainer import TrainRequest, result_line, train_member

    summary = train_member(TrainRequest(member, config, data, out, resume, pcam_checkpoint, cache, epochs,
                                        splits=splits))
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(result_line(summary, out))


@app.command("predict")
def predict_cmd(
    ensemble: Annotated[Path, typer.Option(help="Ensemble directory (cxrlt ensemble build).")],
    out: Annotated[Path, typer.Option(help="Submission CSV to write.")],
    data: Annotated[Path | None, typer.Option("--data", help="CXR-LT data directory.")] = None,
    split: Annotated[Split, typer.Option(help="Image list to score (CXRLT_2026_<split>_labels.csv).")] = Split.test,
    images: Annotated[list[Path] | None, typer.Argument(help="Explicit PNG/DICOM files instead of --data.")] = None,
    mixed: Annotated[bool, typer.Option(help="Use the mixed ensemble without routing.")] = False,
) -> None:
    """Router -> chosen view ensemble -> 30 probabilities per image, in submission format."""
    from cxrlt.data.tables import write_submission
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.labels import KNOWN_CLASSES

    paths, ids = _image_inputs(images, data, split)
    predictor = EnsemblePredictor(ensemble, mixed=mixed)
    frame = predictor.predict_files(paths)
    write_submission(out, ids, frame, KNOWN_CLASSES)
    views = frame["view"].value_counts().to_dict()
    typer.echo(f"wrote {len(ids)} predictions to {out} (views: {views})")


@app.command("eval")
def eval_cmd(
    pred: Annotated[Path, typer.Option(help="Submission CSV: ImageID + one probability column per class.")],
    labels: Annotated[Path, typer.Option(help="Label CSV: ImageID + binary class columns.")],
    out: Annotated[Path, typer.Option(help="Report directory.")],
    train_csv: Annotated[Path | None, typer.Option(help="Training CSV, for head/medium/tail bands.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for 95 % CIs (0 = off).")] = 200,
) -> None:
    """Score predictions: mAP, mAUROC, mF1 (p > 0.5), mECE, per class and per band, with plots."""
    from cxrlt.evaluation import evaluate_files

    summary = evaluate_files(pred, labels, out, train_csv=train_csv, n_bootstrap=bootstrap)

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    typer.echo(" ".join(f"{k}={fmt(summary[k])}" for k in ("mAP", "mAUROC", "mF1", "mECE")))
    for band, vals in summary.get("bands", {}).items():
        typer.echo(f"  {band:<6} classes={vals['n_classes']:<3} mAP={fmt(vals['mAP'])}")
    if summary["excluded"]:
        typer.echo(f"  excluded from means: {summary['excluded']}")
    typer.echo(f"report: {out / 'metrics.json'}, plots: reliability.png, per_class_ap.png")
