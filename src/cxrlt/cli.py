"""The ``cxrlt`` command line: data preparation, evaluation (and, as they land, training, serving and pipelines)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="cxrlt: long-tailed (30 known findings) and zero-shot (6 unseen findings) chest X-ray classification.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Generate, validate, preprocess and split CXR-LT data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DataDir = Annotated[Path, typer.Option("--data", help="CXR-LT data directory (CSV files + images/).")]


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _image_inputs(images: list[Path] | None, data: Path | None, split: str) -> tuple[list[Path], list[str]]:
    """Explicit files, or the ImageIDs of DATA/CXRLT_2026_<split>_labels.csv; returns (paths, ImageIDs)."""
    from cxrlt.data.tables import IMAGES_DIR, read_id_list

    if images:
        return list(images), [p.name for p in images]
    if data is None:
        _fail("give --data DIR or image files")
    if split not in ("dev", "test"):
        _fail("--split must be dev or test")
    ids = read_id_list(data / f"CXRLT_2026_{split}_labels.csv")
    return [data / IMAGES_DIR / i for i in ids], ids


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Directory to write the dataset to.")],
    n_images: Annotated[int, typer.Option(help="Number of images (all splits together).")] = 1000,
    size: Annotated[int, typer.Option(help="Image height in pixels (width is 82-100 % of it).")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed; the dataset is a deterministic function of it.")] = 0,
    faulty: Annotated[bool, typer.Option(help="Plant known defects (truncated PNG, missing file, duplicate ID, "
                                              "non-binary label, unseen leak) for validation tests.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes for rendering.")] = 1,
) -> None:
    """Generate a synthetic CXR-LT dataset in the challenge's exact file format (synthetic, not PadChest)."""
    from cxrlt.data.synth import SynthConfig, generate

    if n_images < 10 or size < 32:
        _fail("need --n-images >= 10 and --size >= 32")
    summary = generate(out, SynthConfig(n_images=n_images, size=size, seed=seed, faulty=faulty, workers=workers))
    typer.echo(f"wrote {summary['n_images']} synthetic images of {summary['n_patients']} patients to {out} "
               f"(splits {summary['splits']})")
    if summary["planted_defects"]:
        typer.echo(f"planted defects: {[d['defect'] for d in summary['planted_defects']]}")


@data_app.command("validate")
def data_validate(
    data: DataDir,
    out: Annotated[Path, typer.Option(help="Report directory (validation.json + validation.md).")],
    min_positives: Annotated[int, typer.Option(help="Minimum positives each known class must have.")] = 1,
    image_check: Annotated[str, typer.Option(help="header (fast), decode (full decode) or none.")] = "header",
    min_size: Annotated[int, typer.Option(help="Minimum image side in pixels.")] = 32,
) -> None:
    """Validate the training CSV (great-expectations suite, zero-shot leak guard) and the image files."""
    from cxrlt.data.tables import TableError
    from cxrlt.data.validate import validate_dataset, write_report

    try:
        report = validate_dataset(data, min_positives, image_check, min_size)
    except TableError as exc:
        _fail(str(exc))
    json_path, md_path = write_report(report, out)
    if report.success:
        typer.echo(f"validation passed ({report.statistics}); report: {md_path}")
        return
    typer.secho(f"validation FAILED: {len(report.failures)} problem(s); report: {md_path}", fg=typer.colors.RED,
                err=True)
    for f in report.failures:
        ids = f" ImageIDs: {', '.join(f.image_ids[:5])}" if f.image_ids else ""
        col = f" [{f.column}]" if f.column else ""
        typer.echo(f"  - {f.check}{col}: {f.message}.{ids}", err=True)
    raise typer.Exit(1)


@data_app.command("preprocess")
def data_preprocess(
    data: DataDir,
    out: Annotated[Path, typer.Option(help="Cache directory for the resized 16-bit PNGs.")],
    size: Annotated[int, typer.Option(help="Output side in pixels (square, zero-padded).")] = 512,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    max_failures: Annotated[int, typer.Option(help="Exit non-zero when more images than this fail.")] = 0,
) -> None:
    """Materialise the preprocessed image cache (percentile clip, pad to square, resize); skips what is done."""
    from cxrlt.data.images import PreprocessConfig
    from cxrlt.data.preprocess import FAILURES_CSV, build_cache
    from cxrlt.data.tables import DEV_LABELS_CSV, IMAGES_DIR, TEST_LABELS_CSV, TRAINING_CSV, read_id_list

    ids: list[str] = []
    for name in (TRAINING_CSV, DEV_LABELS_CSV, TEST_LABELS_CSV):
        if (data / name).exists():
            ids += read_id_list(data / name)
    if not ids:
        _fail(f"{data}: no ImageIDs found in {TRAINING_CSV} or the dev/test label CSVs")
    report = build_cache(ids, data / IMAGES_DIR, out, PreprocessConfig(size=size), workers=workers)
    typer.echo(f"cache {out}: {report.written} written, {report.skipped} already done, "
               f"{len(report.failures)} failed")
    if report.failures:
        for image_id, err in list(report.failures.items())[:10]:
            typer.echo(f"  - {image_id}: {err}", err=True)
        typer.echo(f"all failures: {out / FAILURES_CSV}", err=True)
        if len(report.failures) > max_failures:
            raise typer.Exit(1)


@data_app.command("split")
def data_split(
    data: DataDir,
    out: Annotated[Path, typer.Option(help="Directory for the manifests.")],
    metadata: Annotated[Path | None, typer.Option(help="PadChest-style CSV with a Projection column "
                                                       "(default: DATA/padchest_metadata.csv if present).")] = None,
    removal: Annotated[Path | None, typer.Option(help="CSV of ImageIDs to drop.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of patients for validation.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 42,
    label_source: Annotated[str, typer.Option(help="all, or physician: keep only images whose PadChest MethodLabel "
                                                   "is Physician (seed 000's physician-verified subset).")] = "all",
) -> None:
    """Patient-disjoint train/val split, then the projection split into frontal/lateral manifests.

    Train with `cxrlt train --splits OUT` (and `cxrlt zeroshot train --splits OUT`) so that the removal list and the
    label-source filter applied here are exactly what the networks see."""
    from cxrlt.data.split import split_dataset
    from cxrlt.data.tables import PADCHEST_METADATA_CSV, TRAINING_CSV, TableError

    if metadata is None and (data / PADCHEST_METADATA_CSV).exists():
        metadata = data / PADCHEST_METADATA_CSV
    try:
        summary = split_dataset(data / TRAINING_CSV, out, metadata, removal, val_fraction, seed, label_source)
    except (TableError, ValueError) as exc:
        _fail(str(exc))
    keys = ("images", "patients", "excluded_images", "removed_images", "label_source", "label_source_excluded_images")
    typer.echo(json.dumps({k: summary[k] for k in keys if k in summary}))


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
    from cxrlt.training.trainer import TrainRequest, train_member

    try:
        summary = train_member(TrainRequest(member, config, data, out, resume, pcam_checkpoint, cache, epochs,
                                            splits=splits))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"{member}: best {summary['val_metric']} {summary['best_val_score']:.4f} at epoch "
                   f"{summary['best_epoch'] + 1}; TTA validation {summary['val_tta']}; run dir {out}")


ensemble_app = typer.Typer(help="Fit and inspect per-view ensembles.", no_args_is_help=True)
app.add_typer(ensemble_app, name="ensemble")


@ensemble_app.command("build")
def ensemble_build(
    runs: Annotated[Path, typer.Option(help="Directory with router/ and <view>/<kind>/ member runs.")],
    data: DataDir,
    config: Annotated[Path, typer.Option(help="Profile YAML used for training.")],
    out: Annotated[Path, typer.Option(help="Ensemble directory to write.")],
) -> None:
    """Grid-search each view's member weights on validation mAP (simplex, step from the profile) and bundle."""
    from cxrlt.config import load_config
    from cxrlt.data.tables import TRAINING_CSV
    from cxrlt.ensemble import build_ensemble

    try:
        spec = build_ensemble(runs, out, data / TRAINING_CSV, load_config(config))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    for view, v in spec["views"].items():
        typer.echo(f"{view}: weights {v['weights']} val mAP {v['val_mAP']:.4f} (members {v['val_mAP_members']})")


@app.command("predict")
def predict_cmd(
    ensemble: Annotated[Path, typer.Option(help="Ensemble directory (cxrlt ensemble build).")],
    out: Annotated[Path, typer.Option(help="Submission CSV to write.")],
    data: Annotated[Path | None, typer.Option("--data", help="CXR-LT data directory.")] = None,
    split: Annotated[str, typer.Option(help="dev or test (reads CXRLT_2026_<split>_labels.csv for the IDs).")] = "dev",
    images: Annotated[list[Path] | None, typer.Argument(help="Explicit PNG/DICOM files instead of --data.")] = None,
    mixed: Annotated[bool, typer.Option(help="Use the mixed ensemble without routing.")] = False,
) -> None:
    """Router -> chosen view ensemble -> 30 probabilities per image, in submission format."""
    from cxrlt.data.images import ImageReadError
    from cxrlt.data.tables import write_submission
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.labels import KNOWN_CLASSES

    paths, ids = _image_inputs(images, data, split)
    try:
        predictor = EnsemblePredictor(ensemble, mixed=mixed)
        frame = predictor.predict_files(paths)
    except (ImageReadError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    write_submission(out, ids, frame, KNOWN_CLASSES)
    views = frame["view"].value_counts().to_dict()
    typer.echo(f"wrote {len(ids)} predictions to {out} (views: {views})")


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
    from cxrlt.zeroshot.text import LeakError
    from cxrlt.zeroshot.train import ZeroShotRequest, train_zeroshot

    held = [c.strip() for c in hold_out.split(",") if c.strip()]
    try:
        card = train_zeroshot(ZeroShotRequest(config, data, out, held, resume, cache, epochs, alpha, splits=splits))
    except (ValueError, FileNotFoundError, LeakError) as exc:
        _fail(str(exc))
    typer.echo(f"best known-class validation mAP {card['best_val_known_mAP']:.4f} at epoch {card['best_epoch'] + 1}; "
               f"model {out}")


@zeroshot_app.command("predict")
def zeroshot_predict(
    model: Annotated[Path, typer.Option(help="Zero-shot model directory.")],
    out: Annotated[Path, typer.Option(help="CSV to write (ImageID + one column per class).")],
    data: Annotated[Path | None, typer.Option("--data", help="CXR-LT data directory.")] = None,
    split: Annotated[str, typer.Option(help="dev or test.")] = "test",
    classes: Annotated[str, typer.Option(help="Comma-separated class names or free-text findings "
                                              "(default: the 6 unseen classes).")] = "",
    scoring: Annotated[str | None, typer.Option(help="sigmoid or softmax_pn (default: the model's).")] = None,
    prompts: Annotated[str | None, typer.Option(help="names, descriptions or hybrid (default: the model's).")] = None,
    images: Annotated[list[Path] | None, typer.Argument(help="Explicit PNG/DICOM files instead of --data.")] = None,
) -> None:
    """Score images for unseen findings (or any named findings) zero-shot; writes the Task 2 submission CSV."""
    import numpy as np

    from cxrlt.data.images import ImageReadError, load_preprocessed
    from cxrlt.data.tables import write_submission
    from cxrlt.labels import UNSEEN_CLASSES, canonical_class
    from cxrlt.zeroshot.predict import ZeroShotPredictor

    names = [c.strip() for c in classes.split(",") if c.strip()] or list(UNSEEN_CLASSES)
    names = [canonical_class(c) if c.lower() in {u.lower() for u in UNSEEN_CLASSES} else c for c in names]
    paths, ids = _image_inputs(images, data, split)
    try:
        predictor = ZeroShotPredictor(model)
        arr = np.stack([load_preprocessed(p, predictor.preprocess) for p in paths])
        probs = predictor.predict(arr, names, scoring, prompts)
    except (ImageReadError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
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
    from cxrlt.labels import KNOWN_CLASSES
    from cxrlt.zeroshot.predict import ZeroShotPredictor
    from cxrlt.zeroshot.proxy import labelled_eval_set

    predictor = ZeroShotPredictor(model)
    classes = [c for c in KNOWN_CLASSES if c in predictor.card["train_classes"]]
    data_split = predictor.card.get("data_split", {"val_fraction": 0.1, "split_seed": 42})
    try:
        labels, images = labelled_eval_set(data, split, predictor.preprocess, data_split["val_fraction"],
                                           data_split["split_seed"], splits)
    except ValueError as exc:
        _fail(str(exc))
    cal = predictor.fit_calibration(images, labels[classes].to_numpy(), classes)
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


@app.command("export")
def export_cmd(
    ensemble: Annotated[Path, typer.Option(help="Ensemble directory (cxrlt ensemble build).")],
    out: Annotated[Path, typer.Option(help="Served-bundle directory to write (replaced).")],
    zeroshot: Annotated[Path | None, typer.Option(help="Zero-shot model directory.")] = None,
) -> None:
    """Export every served network to ONNX (dynamic batch axis) with the metadata serving needs."""
    from cxrlt.export import export_bundle

    try:
        bundle = export_bundle(ensemble, zeroshot, out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"served bundle {out}: views {list(bundle['views'])}, zero-shot {'yes' if bundle['zeroshot'] else 'no'}")


serve_app = typer.Typer(help="Triton serving: build the model repository, start and stop the server.",
                        no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("build")
def serve_build(
    bundle: Annotated[str, typer.Option(help="Served-bundle directory, or models:/<name>@<alias> from MLflow.")],
    out: Annotated[Path, typer.Option(help="Model repository directory to write (replaced).")],
    onnx_runtime: Annotated[str, typer.Option(help="python (ONNX Runtime in the python backend; embedded default) "
                                                   "or native (platform onnxruntime_onnx; NGC image).")] = "python",
    instances: Annotated[int, typer.Option(help="Instances per compute model.")] = 1,
    summary_file: Annotated[Path | None, typer.Option("--summary", help="Also write the build summary (models, "
                                                                        "version) as JSON here.")] = None,
) -> None:
    """Build the Triton model repository: preprocess, router, view ensembles, zero-shot head, cxr entry point.

    Writes only OUT (and --summary if given): a registry bundle is downloaded into a temporary directory ($TMPDIR)
    that is removed afterwards, so the command runs in a pod whose only writable paths are OUT and /tmp. An alias is
    resolved to one version once; the files and the served MODEL_VERSION both come from that version."""
    import tempfile

    from serving.repository import build_repository

    try:
        with tempfile.TemporaryDirectory(prefix="cxrlt-bundle-") as tmp:
            bundle_dir, version = Path(bundle), None
            if bundle.startswith("models:/"):
                from cxrlt.registry import download_verified_bundle, resolve_version

                name, number = resolve_version(bundle)
                bundle_dir = download_verified_bundle(name, number, tmp)
                version = f"{name}/{number}"
            summary = build_repository(bundle_dir, out, onnx_runtime, instances, version)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # RegistryError: a tampered or unmanifested bundle
        _fail(str(exc))
    if summary_file is not None:
        summary_file.write_text(json.dumps(summary, indent=2))
    typer.echo(f"model repository {out}: {', '.join(summary['models'])} ({onnx_runtime} ONNX, version "
               f"{summary['model_version']})")


@serve_app.command("up")
def serve_up(
    repository: Annotated[Path, typer.Option(help="Model repository (cxrlt serve build).")],
    name: Annotated[str, typer.Option(help="Server name (state under ~/.cache/cxrlt/servers/NAME).")] = "default",
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (0 = a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0 = a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port (0 = a free one).")] = 8002,
) -> None:
    """Start the bundled tritonserver (creating the serving environment on first use) and wait until ready."""
    from serving.server import ServeError, start

    try:
        h = start(repository, name, host, http_port, grpc_port, metrics_port)
    except ServeError as exc:
        _fail(str(exc))
    typer.echo(f"triton ready: gRPC {h.grpc_url}, HTTP {h.http_url}, metrics {h.host}:{h.metrics_port} "
               f"(pid {h.pid}, log {h.log_file})")


@serve_app.command("down")
def serve_down(name: Annotated[str, typer.Option(help="Server name.")] = "default") -> None:
    """Drain and stop a server started by cxrlt serve up."""
    from serving.server import stop

    typer.echo("stopped" if stop(name) else f"no server named {name!r} is recorded")


@app.command("infer")
def infer_cmd(
    files: Annotated[list[Path], typer.Argument(help="PNG or DICOM files.")],
    url: Annotated[str, typer.Option(help="Triton gRPC address HOST:PORT.")] = "127.0.0.1:8001",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write one row per item (source, view, "
                                                               "error, every probability by class name).")] = None,
    timeout: Annotated[float, typer.Option(help="Per-call timeout in seconds.")] = 30.0,
    top: Annotated[int, typer.Option(help="Known findings per image in the table (all unseen ones follow).")] = 8,
    labels: Annotated[Path | None, typer.Option(help="Label CSV (ImageID + class columns, e.g. a dev or synthetic "
                                                     "test set): the table marks findings that are truly present "
                                                     "and lists true findings the table left out.")] = None,
) -> None:
    """Send images to the served cxr model over gRPC and print the findings (known and unseen) of every item.

    Every item is reported, also missing files and refused images (with the reason); the exit code is 1 when any
    item failed, 0 when all were scored."""
    from serving.client import CXRClient

    truth: dict[str, set[str]] = {}
    if labels is not None:
        from cxrlt.data.tables import read_label_sets

        truth = read_label_sets(labels)
    client = CXRClient(url, timeout=timeout)
    try:
        results = client.infer_files(files)
        bands = client.bands()
    except Exception as exc:  # tritonclient raises its own exception type with the server's message
        _fail(f"inference failed: {exc}")
    finally:
        client.close()
    failed = [r for r in results if r.error]
    if csv_out is not None:
        import pandas as pd

        pd.DataFrame([{"source": r.source, "view": r.view, "view_confidence": r.view_confidence, "error": r.error,
                       **r.known, **r.unseen} for r in results]).to_csv(csv_out, index=False)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        if failed:
            raise typer.Exit(1)
        return
    for r in results:
        typer.echo(f"\n{r.source}  view={r.view} ({r.view_confidence:.2f})  model={r.model_version}")
        if r.error:
            typer.secho(f"  error: {r.error}", fg=typer.colors.RED)
            continue
        present = truth.get(Path(r.source).name)
        typer.echo(f"  {'finding':<32} {'probability':>11}  {'kind':<7} {'band':<9}" + (" truth" if truth else ""))
        known = [f for f in r.findings() if f.kind == "known"][:top]
        shown = known + [f for f in r.findings() if f.kind == "unseen"]  # top known, then every unseen
        for f in shown:
            band = bands.get(f.name, "zero-shot" if f.kind == "unseen" else "-")
            mark = ("" if present is None else ("present" if f.name in present else "-")) if truth else ""
            typer.echo(f"  {f.name:<32} {f.probability:>11.3f}  {f.kind:<7} {band:<9} {mark}".rstrip())
        if present is not None:
            missed = sorted(present - {f.name for f in shown})
            typer.echo(f"  truly present, not in the table above: {', '.join(missed) if missed else 'none'}")
        elif truth:
            typer.echo("  (not in the label CSV: no truth to show)")
    if failed:
        typer.secho(f"\n{len(failed)} of {len(results)} items failed", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


mlflow_app = typer.Typer(help="A local MLflow tracking/registry server (SQLite + local or S3 artifacts).",
                         no_args_is_help=True)
app.add_typer(mlflow_app, name="mlflow")


@mlflow_app.command("up")
def mlflow_up(
    data: Annotated[Path, typer.Option(help="Directory for mlflow.db and local artifacts.")] = Path("mlflow_data"),
    port: Annotated[int, typer.Option(help="Port (0 = a free one).")] = 5000,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    artifacts: Annotated[str | None, typer.Option(help="Artifact destination (default DATA/artifacts; or "
                                                       "s3://bucket/prefix with MLFLOW_S3_ENDPOINT_URL/AWS_* set).")]
    = None,
    allowed_hosts: Annotated[str | None, typer.Option(help="Comma-separated Host headers to accept.")] = None,
) -> None:
    """Start mlflow server (one worker, job execution off) and wait until /health answers."""
    from cxrlt.mlflow_server import start

    try:
        state = start(data, port, host, artifacts, allowed_hosts)
    except RuntimeError as exc:
        _fail(str(exc))
    uri = state["tracking_uri"]
    typer.echo(f"MLflow at {uri} (pid {state['pid']}); export MLFLOW_TRACKING_URI={uri}")


@mlflow_app.command("down")
def mlflow_down() -> None:
    """Stop the server started by cxrlt mlflow up."""
    from cxrlt.mlflow_server import stop

    typer.echo("stopped" if stop() else "no MLflow server is recorded")


registry_app = typer.Typer(help="Registry: promote the challenger, roll the champion back.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("promote")
def registry_promote(
    labels: Annotated[Path, typer.Option(help="Labels of the evaluation set both versions were scored on.")],
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")] = None,
    name: Annotated[str, typer.Option(help="Registered model.")] = "cxrlt-bundle",
    margin: Annotated[float, typer.Option(help="Non-inferiority margin on mAP.")] = 0.02,
) -> None:
    """champion <- challenger if it passed its gate and its mAP CI (paired bootstrap) is within the margin."""
    from cxrlt.registry import RegistryError, promote

    try:
        decision = promote(labels, name, tracking_uri, margin)
    except RegistryError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(decision))


@registry_app.command("rollback")
def registry_rollback(
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")] = None,
    name: Annotated[str, typer.Option(help="Registered model.")] = "cxrlt-bundle",
) -> None:
    """Point champion back at the previous champion (from the alias audit trail)."""
    from cxrlt.registry import RegistryError, rollback

    try:
        typer.echo(json.dumps(rollback(name, tracking_uri)))
    except RegistryError as exc:
        _fail(str(exc))


pipeline_app = typer.Typer(help="Kubeflow pipelines: compile, run locally, schedule.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("compile")
def pipeline_compile(out: Annotated[Path, typer.Option(help="Output folder.")] = Path("pipelines/compiled")) -> None:
    """Compile every pipeline to KFP IR YAML."""
    from pipelines.compile import compile_all

    for path in compile_all(out):
        typer.echo(str(path))


@pipeline_app.command("run")
def pipeline_run(
    data: DataDir,
    config: Annotated[Path, typer.Option(help="Profile YAML.")] = Path("configs/tiny.yaml"),
    local: Annotated[bool, typer.Option("--local", help="Run with kfp.local's SubprocessRunner.")] = True,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")] = None,
    root: Annotated[Path, typer.Option(help="Local pipeline root.")] = Path("local_outputs"),
    epochs: Annotated[int, typer.Option(help="Member epochs (0 = profile).")] = 0,
    zeroshot_epochs: Annotated[int, typer.Option(help="Zero-shot epochs (0 = profile).")] = 0,
    min_map: Annotated[float, typer.Option(help="Gate: minimum mAP.")] = 0.1,
    max_ece: Annotated[float, typer.Option(help="Gate: maximum mECE.")] = 0.5,
    label_source: Annotated[str, typer.Option(help="all, or physician (PadChest MethodLabel == Physician).")] = "all",
    removal: Annotated[Path | None, typer.Option(help="CSV of ImageIDs to drop before splitting.")] = None,
) -> None:
    """Run the training pipeline on this machine (validate ... register); the jobs follow the profile's networks."""
    from pipelines.local_run import run_training_local

    if not local:
        _fail("only --local runs from here; compile and upload for a cluster (cxrlt pipeline schedule)")
    if not tracking_uri:
        _fail("set MLFLOW_TRACKING_URI or --tracking-uri (cxrlt mlflow up prints it)")
    from cxrlt.config import load_config, pipeline_jobs

    cfg = load_config(config)
    result = run_training_local(root, data_dir=str(data.resolve()), config=str(config.resolve()),
                                tracking_uri=tracking_uri, epochs=epochs, zeroshot_epochs=zeroshot_epochs,
                                min_map=min_map, max_ece=max_ece, cache_size=int(cfg["data"]["cache_size"]),
                                jobs=pipeline_jobs(cfg), label_source=label_source,
                                removal_csv=str(removal.resolve()) if removal else "",
                                val_fraction=cfg["data"]["val_fraction"], split_seed=cfg["data"]["split_seed"])
    typer.echo(f"pipeline finished; outputs under {result['run_dir']}")


@pipeline_app.command("schedule")
def pipeline_schedule(
    host: Annotated[str, typer.Option(help="KFP API endpoint.")],
    cron: Annotated[str, typer.Option(help="Six-field cron with seconds, e.g. '0 0 2 * * 0'.")],
    package: Annotated[Path, typer.Option(help="Compiled pipeline YAML.")] = Path(
        "pipelines/compiled/training_pipeline.yaml"),
    param: Annotated[list[str] | None, typer.Option(help="Pipeline parameter KEY=VALUE (repeatable).")] = None,
    job_name: Annotated[str, typer.Option(help="Recurring run name.")] = "cxrlt-weekly-retraining",
) -> None:
    """Create a KFP recurring run of the compiled training pipeline on a KFP endpoint."""
    from pipelines.schedule import schedule

    params = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--param must be KEY=VALUE, got {item!r}")
        params[key] = value
    try:
        run = schedule(host, str(package), cron, params, job_name)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"recurring run {getattr(run, 'recurring_run_id', '?')} created ({cron})")


report_app = typer.Typer(help="Reproduce the result tables in docs/results.md (synthetic data).",
                         no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("task1")
def report_task1(
    work: Annotated[Path, typer.Option(help="Working directory (data, runs, ensemble); reused if present.")] = Path(
        "report_work/task1"),
    config: Annotated[Path, typer.Option(help="Profile YAML.")] = Path("configs/tiny.yaml"),
    out: Annotated[Path, typer.Option(help="Markdown file whose Task 1 section is (re)written.")] = Path(
        "docs/results.md"),
    n_images: Annotated[int, typer.Option(help="Synthetic images to generate.")] = 2000,
    size: Annotated[int, typer.Option(help="Synthetic image size.")] = 64,
) -> None:
    """Train every Task 1 member on synthetic data, build both ensembles, run the loss ablation, write the table."""
    from cxrlt.reports import task1_report, update_section

    text = task1_report(work, config, n_images=n_images, size=size)
    update_section(out, "task1", text)
    typer.echo(text)


@report_app.command("task2")
def report_task2(
    work: Annotated[Path, typer.Option(help="Working directory; reused if present.")] = Path("report_work/task2"),
    config: Annotated[Path, typer.Option(help="Profile YAML.")] = Path("configs/tiny.yaml"),
    out: Annotated[Path, typer.Option(help="Markdown file whose Task 2 section is (re)written.")] = Path(
        "docs/results.md"),
    n_images: Annotated[int, typer.Option(help="Synthetic images to generate.")] = 2000,
    epochs: Annotated[int, typer.Option(help="Epochs per CLIP model.")] = 10,
) -> None:
    """Train the zero-shot CLIP with alpha 0 / 1.0 / 1.5, compare prompts, run the proxy groups, write the tables."""
    from cxrlt.reports import task2_report, update_section

    text = task2_report(work, config, n_images=n_images, epochs=epochs)
    update_section(out, "task2", text)
    typer.echo(text)


@report_app.command("recipes")
def report_recipes(
    work: Annotated[Path, typer.Option(help="Working directory; reused if present.")] = Path("report_work/recipes"),
    out: Annotated[Path, typer.Option(help="Markdown file whose recipes section is (re)written.")] = Path(
        "docs/results.md"),
    n_images: Annotated[int, typer.Option(help="Synthetic images to generate.")] = 1500,
    seeds: Annotated[str, typer.Option(help="Comma-separated training seeds.")] = "0,1,2",
) -> None:
    """Train the seed-000 and HPH recipes (CPU size) on one synthetic dataset for several seeds; write the table."""
    from cxrlt.reports import recipes_report, update_section

    root = Path(__file__).resolve().parents[2]  # the checkout: configs/ lives there
    text = recipes_report(work, root, n_images=n_images, seeds=tuple(int(s) for s in seeds.split(",")))
    update_section(out, "recipes", text)
    typer.echo(text)


@app.command("eval")
def eval_cmd(
    pred: Annotated[Path, typer.Option(help="Submission CSV: ImageID + one probability column per class.")],
    labels: Annotated[Path, typer.Option(help="Label CSV: ImageID + binary class columns.")],
    out: Annotated[Path, typer.Option(help="Report directory.")],
    train_csv: Annotated[Path | None, typer.Option(help="Training CSV, for head/medium/tail bands.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for 95 % CIs (0 = off).")] = 200,
) -> None:
    """Score predictions: mAP, mAUROC, mF1 (p > 0.5), mECE, per class and per band, with plots."""
    from cxrlt.data.tables import TableError
    from cxrlt.evaluation import EvalInputError, evaluate_files

    try:
        summary = evaluate_files(pred, labels, out, train_csv=train_csv, n_bootstrap=bootstrap)
    except (EvalInputError, TableError) as exc:
        _fail(str(exc))

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    typer.echo(" ".join(f"{k}={fmt(summary[k])}" for k in ("mAP", "mAUROC", "mF1", "mECE")))
    for band, vals in summary.get("bands", {}).items():
        typer.echo(f"  {band:<6} classes={vals['n_classes']:<3} mAP={fmt(vals['mAP'])}")
    if summary["excluded"]:
        typer.echo(f"  excluded from means: {summary['excluded']}")
    typer.echo(f"report: {out / 'metrics.json'}, plots: reliability.png, per_class_ap.png")

weights_app = typer.Typer(help="Pretrained weights: mirror hub weights or files into object storage for air-gapped "
                               "clusters, and list a mirror.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("mirror")
def weights_mirror(
    specs: Annotated[list[str], typer.Argument(help="timm tags (convnextv2_tiny.fcmae_ft_in22k_in1k), open_clip tags "
                                                    "(with --clip-arch), weight files, s3:// or MLflow URIs.")],
    to: Annotated[str, typer.Option("--to", help="Mirror prefix, s3://BUCKET/PREFIX.")],
    name: Annotated[str | None, typer.Option(help="Name to store a single spec under (for files: the name the "
                                                  "profile's `pretrained` will use, e.g. chexzero).")] = None,
    clip_arch: Annotated[str | None, typer.Option(help="open_clip architecture the specs are CLIP weights of "
                                                       "(e.g. ViT-B-32-quickgelu).")] = None,
) -> None:
    """Copy weight files into the mirror with their sha256 and source (run where the hubs or files are reachable).

    Training resolves tags through the mirror first when the profile's weights_mirror or CXRLT_WEIGHTS_MIRROR names
    it, and verifies each file's sha256 before use.
    """
    from cxrlt.weights import WeightsNotFoundError, mirror_weights

    if name and len(specs) > 1:
        _fail("--name applies to a single spec")
    for spec in specs:
        try:
            card = mirror_weights(spec, to, name, "open_clip" if clip_arch else "timm", clip_arch)
        except (WeightsNotFoundError, ValueError) as exc:
            _fail(str(exc))
        typer.echo(f"mirrored {card['name']}: {card['file']} ({card['size'] / 1e6:.1f} MB, sha256 "
                   f"{card['sha256'][:16]}...) from {card['source']}")


@weights_app.command("list")
def weights_list(
    from_: Annotated[str, typer.Option("--from", help="Mirror prefix, s3://BUCKET/PREFIX.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the mirror cards as JSON.")] = False,
) -> None:
    """List the weights stored in a mirror: name, file, size, sha256 and where each came from."""
    from cxrlt.weights import list_mirror

    cards = list_mirror(from_)
    if as_json:
        typer.echo(json.dumps(cards, indent=2))
        return
    if not cards:
        typer.echo(f"no weights mirrored under {from_}")
    for c in cards:
        typer.echo(f"{c['name']:48} {c['file']:28} {c['size'] / 1e6:9.1f} MB  {c['sha256'][:16]}  {c['source']}")


models_app = typer.Typer(help="Inspect the networks a profile defines.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("summary")
def models_summary(
    config: Annotated[Path, typer.Option(help="Profile YAML (configs/tiny.yaml, configs/paper.yaml, ...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Every network of the profile: architecture, parameter count, input size, channels, normalisation and where
    its weights come from (tag, file, mirror or random). Validates the profile; resolves no weights."""
    from cxrlt.config import ConfigError
    from cxrlt.models.summary import format_table, summarize_profile

    try:
        rows = summarize_profile(config)
    except (ConfigError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))


if __name__ == "__main__":
    app()
