"""``cxrlt zeroshot``: Task 2, zero-shot recognition of unseen findings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import DataDir, Split, _image_inputs, app

zeroshot_app = typer.Typer(help="Task 2: zero-shot recognition of unseen findings (dual-branch CLIP).",
                           no_args_is_help=True)
app.add_typer(zeroshot_app, name="zeroshot")


@zeroshot_app.command("train")
def zeroshot_train(
    config: Annotated[Path, typer.Option(help="Profile YAML (its zeroshot: section).")],
    data: DataDir,
    out: Annotated[Path, typer.Option(help="Model directory (zeroshot.json, best.pt, last.pt).")],
    alpha: Annotated[float | None, typer.Option(help="ASL branch weight (0 = plain CLIP fine-tuning).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the profile's epochs.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    hold_out: Annotated[str, typer.Option(help="Comma-separated known classes to hold out (proxy validation).")] = "",
    cache: Annotated[Path | None, typer.Option(help="Preprocess cache directory.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Manifests from `cxrlt data split` (removal list, label "
                                                     "source).")] = None,
) -> None:
    """Fine-tune CLIP with contrastive + alpha * ASL on label-synthesised reports (torchrun-capable)."""
    from cxrlt.zeroshot.train import ZeroShotRequest, result_line, train_zeroshot

    held = [c.strip() for c in hold_out.split(",") if c.strip()]
    card = train_zeroshot(ZeroShotRequest(config, data, out, held, resume, cache, epochs, alpha, splits=splits))
    typer.echo(result_line(card, out))


@zeroshot_app.command("predict")
def zeroshot_predict(
    model: Annotated[Path, typer.Option(help="Zero-shot model directory.")],
    out: Annotated[Path, typer.Option(help="CSV to write (ImageID + one column per class).")],
    data: Annotated[Path | None, typer.Option("--data", help="CXR-LT data directory.")] = None,
    split: Annotated[Split, typer.Option(help="Image list to score (CXRLT_2026_<split>_labels.csv).")] = Split.test,
    classes: Annotated[str, typer.Option(help="Comma-separated class names or free-text findings "
                                              "(default: the 6 unseen classes).")] = "",
    scoring: Annotated[str | None, typer.Option(help="sigmoid or softmax_pn (default: the model's).")] = None,
    prompts: Annotated[str | None, typer.Option(help="names, descriptions or hybrid (default: the model's).")] = None,
    images: Annotated[list[Path] | None, typer.Argument(help="Explicit PNG/DICOM files instead of --data.")] = None,
) -> None:
    """Score images for unseen findings (or any named findings) zero-shot; writes the Task 2 submission CSV."""
    import numpy as np

    from cxrlt.data.images import load_preprocessed
    from cxrlt.data.tables import write_submission
    from cxrlt.labels import UNSEEN_CLASSES, canonical_class
    from cxrlt.zeroshot.predict import ZeroShotPredictor

    names = [c.strip() for c in classes.split(",") if c.strip()] or list(UNSEEN_CLASSES)
    names = [canonical_class(c) if c.lower() in {u.lower() for u in UNSEEN_CLASSES} else c for c in names]
    paths, ids = _image_inputs(images, data, split)
    predictor = ZeroShotPredictor(model)
    arr = np.stack([load_preprocessed(p, predictor.preprocess) for p in paths])
    probs = predictor.predict(arr, names, scoring, prompts)
    write_submission(out, ids, {c: probs[:, j] for j, c in enumerate(names)}, names)
    typer.echo(f"wrote {len(ids)} x {len(names)} zero-shot probabilities to {out}")


@zeroshot_app.command("calibrate")
def zeroshot_calibrate(
    model: Annotated[Path, typer.Option(help="Zero-shot model directory (calibration is saved in its card).")],
    data: DataDir,
    split: Annotated[str, typer.Option(help="Labelled images to fit on: val (the validation part of the training "
                                            "split, default) or dev. Test labels are refused.")] = "val",
    splits: Annotated[Path | None, typer.Option(help="Manifests from `cxrlt data split` (for --split val).")] = None,
) -> None:
    """Fit a Platt calibration of the zero-shot scores on the *known* classes; it is applied to unseen ones."""
    from cxrlt.zeroshot.proxy import calibrate_on_known

    cal = calibrate_on_known(model, data, split, splits)
    typer.echo(f"calibration a={cal['a']:.3f} b={cal['b']:.3f} ({cal['scoring']}), saved to {model}/zeroshot.json")


@zeroshot_app.command("proxy-validate")
def zeroshot_proxy(
    config: Annotated[Path, typer.Option(help="Profile YAML.")],
    data: DataDir,
    out: Annotated[Path, typer.Option(help="Directory for the per-group runs and proxy_validation.json.")],
    groups: Annotated[str, typer.Option(help="Comma-separated proxy groups.")] = "A,B,C",
    epochs: Annotated[int | None, typer.Option(help="Override the profile's epochs.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Manifests from `cxrlt data split`.")] = None,
) -> None:
    """Hold out each proxy group of 6 known classes, train without them, score them zero-shot (AP per class) on the
    validation part of the training set (never on test labels)."""
    from cxrlt.zeroshot.proxy import proxy_validate

    summary = proxy_validate(config, data, out, [g.strip() for g in groups.split(",")], epochs, splits)
    for g, r in summary["groups"].items():
        typer.echo(f"group {g}: mAP {r['mAP']:.4f} (chance {r['chance_mAP']:.4f}) "
                   + ", ".join(f"{c} {v['AP']:.3f}" for c, v in r["per_class"].items() if v["AP"] is not None))
    typer.echo(f"average mAP over groups: {summary['average_mAP']:.4f}")
