"""``cxrlt data``: generate, validate, preprocess and split CXR-LT data."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import DataDir, _fail, app
from cxrlt.config import DataConfig

_SPLIT_DEFAULTS = DataConfig()  # the profile's split, so `data split` and a pipeline run agree

CacheFormat = StrEnum("CacheFormat", ["png", "shards"])

data_app = typer.Typer(help="Generate, validate, preprocess and split CXR-LT data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


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
    from cxrlt.data.validate import validate_dataset, write_report

    report = validate_dataset(data, min_positives, image_check, min_size)
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
    out: Annotated[Path, typer.Option(help="Cache directory for the resized 16-bit images.")],
    size: Annotated[int, typer.Option(help="Output side in pixels (square, zero-padded).")] = 512,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    max_failures: Annotated[int, typer.Option(help="Exit non-zero when more images than this fail.")] = 0,
    cache_format: Annotated[CacheFormat, typer.Option(
        "--format", help="png: one 16-bit PNG per image (half the disk); shards: memory-mapped uint16 shards with "
                         "an index, read without decoding (for GPU training, where PNG decoding starves the step)."
    )] = CacheFormat.png,
    shard_images: Annotated[int, typer.Option(help="Images per shard file (--format shards).")] = 1024,
) -> None:
    """Materialise the preprocessed image cache (percentile clip, pad to square, resize); skips what is done."""
    from cxrlt.data.images import PreprocessConfig
    from cxrlt.data.preprocess import FAILURES_CSV, build_cache
    from cxrlt.data.shards import build_shards
    from cxrlt.data.tables import DEV_LABELS_CSV, IMAGES_DIR, TEST_LABELS_CSV, TRAINING_CSV, read_id_list

    ids: list[str] = []
    for name in (TRAINING_CSV, DEV_LABELS_CSV, TEST_LABELS_CSV):
        if (data / name).exists():
            ids += read_id_list(data / name)
    if not ids:
        _fail(f"{data}: no ImageIDs found in {TRAINING_CSV} or the dev/test label CSVs")
    if cache_format == CacheFormat.shards:
        report = build_shards(ids, data / IMAGES_DIR, out, PreprocessConfig(size=size), workers=workers,
                              shard_images=shard_images)
    else:
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
    val_fraction: Annotated[float, typer.Option(help="Fraction of patients for validation.")] \
    = _SPLIT_DEFAULTS.val_fraction,
    seed: Annotated[int, typer.Option(help="Split seed.")] = _SPLIT_DEFAULTS.split_seed,
) -> None:
    """Patient-disjoint train/val split, then the projection split into frontal/lateral manifests, for every label
    and (under OUT/physician/, when the metadata has PadChest's MethodLabel) for the physician-verified labels of the
    same patients.

    Train with `cxrlt train --splits OUT` (and `cxrlt zeroshot train --splits OUT`): the removal list applied here is
    exactly what the networks see, and each task reads the label source its profile names (train.label_source,
    zeroshot.label_source)."""
    from cxrlt.data.split import split_dataset
    from cxrlt.data.tables import PADCHEST_METADATA_CSV, TRAINING_CSV

    if metadata is None and (data / PADCHEST_METADATA_CSV).exists():
        metadata = data / PADCHEST_METADATA_CSV
    summary = split_dataset(data / TRAINING_CSV, out, metadata, removal, val_fraction, seed)
    keys = ("images", "patients", "excluded_images", "removed_images", "label_sources", "label_methods")
    typer.echo(json.dumps({k: summary[k] for k in keys if k in summary}))
