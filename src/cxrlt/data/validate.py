"""``cxrlt data validate``: a great-expectations suite for the training CSV plus fast image-file checks.

The suite encodes the challenge contract (exact columns and order, unique non-null IDs, binary labels, enough
positives per class) and the zero-shot leak guard: no unseen-class column or positive may reach training data.
Image checks read only PNG headers and trailers by default (100k files in seconds); ``decode`` mode decodes fully.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from cxrlt.data.images import PNG_IEND, PNG_SIGNATURE, ImageReadError, is_dicom, read_image
from cxrlt.data.tables import (
    DEV_LABELS_CSV,
    IMAGES_DIR,
    SAFE_IMAGE_ID,
    TEST_LABELS_CSV,
    TRAINING_CSV,
    read_training_csv,
    unsafe_image_ids,
)
from cxrlt.errors import InvalidInputError
from cxrlt.labels import KNOWN_CLASSES, TRAINING_META_COLUMNS, unseen_columns_in

MAX_LISTED_IDS = 50
IMAGE_CHECK_MODES = ("header", "decode", "none")


@dataclass
class Failure:
    check: str
    message: str
    column: str | None = None
    image_ids: list[str] = field(default_factory=list)
    n_offending: int = 0


@dataclass
class ValidationReport:
    failures: list[Failure] = field(default_factory=list)
    statistics: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"success": self.success, "statistics": self.statistics, "failures": [asdict(f) for f in self.failures]}

    def to_markdown(self) -> str:
        lines = ["# cxrlt data validation", "", f"**Result: {'PASSED' if self.success else 'FAILED'}**", ""]
        for k, v in self.statistics.items():
            lines.append(f"- {k}: {v}")
        if self.failures:
            lines += ["", "| check | column | offending | example ImageIDs | message |", "|---|---|---|---|---|"]
            for f in self.failures:
                ids = ", ".join(f.image_ids[:5]) + (" ..." if len(f.image_ids) > 5 else "")
                lines.append(f"| {f.check} | {f.column or ''} | {f.n_offending} | {ids} | {f.message} |")
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- expectation suite
def _suite(columns: list[str], min_positives: int):
    """The training-CSV expectation suite, tailored to the columns that exist (a missing column is its own failure)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(TRAINING_META_COLUMNS) + list(KNOWN_CLASSES)),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    if "ImageID" in columns:
        expectations += [gxe.ExpectColumnValuesToNotBeNull(column="ImageID"),
                         gxe.ExpectColumnValuesToBeUnique(column="ImageID"),
                         gxe.ExpectColumnValuesToMatchRegex(column="ImageID", regex=SAFE_IMAGE_ID)]
    if "PatientID" in columns:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column="PatientID"))
    for name in KNOWN_CLASSES:
        if name in columns:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=[0, 1]))
            expectations.append(gxe.ExpectColumnSumToBeBetween(column=name, min_value=min_positives))
    for name in unseen_columns_in(columns):  # zero-shot leak guard: an unseen column may only hold zeros ...
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=[0], meta={"leak_guard": True}))
    suite = gx.ExpectationSuite(name="cxrlt_training_csv", expectations=expectations)
    return suite


_CHECK_NAMES = {
    "expect_table_columns_to_match_ordered_list": "columns",
    "expect_table_row_count_to_be_between": "row_count",
    "expect_column_values_to_not_be_null": "not_null",
    "expect_column_values_to_be_unique": "unique_image_id",
    "expect_column_values_to_match_regex": "safe_image_id",
    "expect_column_values_to_be_in_set": "binary_labels",
    "expect_column_sum_to_be_between": "min_positives",
}


def validate_training_frame(df: pd.DataFrame, min_positives: int = 1) -> tuple[list[Failure], dict]:
    """Run the expectation suite on a training frame; each failed expectation becomes a named :class:`Failure`."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # GE sets INFO on import
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (context.data_sources.add_pandas(name="pandas").add_dataframe_asset(name="training_csv")
                 .add_batch_definition_whole_dataframe("whole"))
    suite = context.suites.add(_suite(list(df.columns), min_positives))
    vd = context.validation_definitions.add(gx.ValidationDefinition(name="training_csv", data=batch_def, suite=suite))
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": ["ImageID"]} \
        if "ImageID" in df.columns else "SUMMARY"
    res = vd.run(batch_parameters={"dataframe": df}, result_format=result_format)
    failures = []
    for r in res.results:
        if r.success:
            continue
        cfg = r.expectation_config
        column = cfg.kwargs.get("column")
        check = "unseen_leak" if (cfg.meta or {}).get("leak_guard") else _CHECK_NAMES.get(cfg.type, cfg.type)
        failures.append(_describe(check, column, r.result or {}, cfg.kwargs, r.exception_info))
    stats = {k: res.statistics[k] for k in ("evaluated_expectations", "successful_expectations")}
    return failures, stats


def _offending_ids(result: dict) -> list[str]:
    ids = []
    for item in result.get("unexpected_index_list") or []:
        ids.append(str(item["ImageID"]) if isinstance(item, dict) else str(item))
    return list(dict.fromkeys(ids))


def _describe(check: str, column: str | None, result: dict, kwargs: dict, exception_info) -> Failure:
    ids = _offending_ids(result)
    n = int(result.get("unexpected_count") or len(ids))
    if check == "columns":
        details = result.get("details", {}).get("mismatched") or {}
        unseen = unseen_columns_in(result.get("observed_value") or [])
        msg = f"columns differ from ImageID, StudyDate_DICOM, PatientID + the 30 known classes: {details}"
        if unseen:
            check, msg = "unseen_leak", f"unseen-class columns {unseen} are in the training CSV (zero-shot leak)"
        return Failure(check, msg, column)
    if check == "unseen_leak":
        return Failure(check, f"unseen class {column!r} is marked positive in training data (zero-shot leak)",
                       column, ids[:MAX_LISTED_IDS], n)
    if check == "unique_image_id":
        values = [str(v) for v in result.get("partial_unexpected_list") or []]
        return Failure(check, "ImageID is not unique", column, list(dict.fromkeys(values))[:MAX_LISTED_IDS], n)
    if check == "binary_labels":
        values = sorted({str(v) for v in result.get("partial_unexpected_list") or []})
        return Failure(check, f"label values other than 0/1: {values}", column, ids[:MAX_LISTED_IDS], n)
    if check == "min_positives":
        wanted = int(kwargs.get("min_value") or 0)
        return Failure(check, f"{result.get('observed_value')} positives, expected at least {wanted}", column)
    if check == "not_null":
        return Failure(check, f"{n} blank values", column, ids[:MAX_LISTED_IDS], n)
    msg = (exception_info or {}).get("exception_message") if isinstance(exception_info, dict) else None
    return Failure(check, msg or f"expectation failed: {result}", column, ids[:MAX_LISTED_IDS], n)


# -------------------------------------------------------------------------------------------------------- image checks
def check_image_header(path: Path, min_size: int) -> str | None:
    """Cheap structural check of one file: exists, non-empty, PNG signature/IHDR/bit depth/size, IEND trailer."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing_file"
    if size == 0:
        return "empty_file"
    with path.open("rb") as fh:
        head = fh.read(132)
        if is_dicom(head):
            return None
        if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
            return "not_png"
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        bit_depth = head[24]
        fh.seek(max(0, size - 12))
        tail = fh.read()
    if bit_depth not in (8, 16):
        return f"bit_depth_{bit_depth}"
    if min(width, height) < min_size:
        return "too_small"
    if not tail.endswith(PNG_IEND):
        return "truncated_png"
    return None


def check_image_decode(path: Path, min_size: int) -> str | None:
    problem = check_image_header(path, min_size)
    if problem:
        return problem
    try:
        img = read_image(path)
    except ImageReadError:
        return "undecodable"
    return "too_small" if min(img.shape) < min_size else None


def check_images(image_ids: Iterable[str], image_dir: str | Path, mode: str = "header",
                 min_size: int = 32) -> list[Failure]:
    if mode not in IMAGE_CHECK_MODES:
        raise InvalidInputError(f"image check mode must be one of {IMAGE_CHECK_MODES}")
    if mode == "none":
        return []
    check = check_image_header if mode == "header" else check_image_decode
    image_dir = Path(image_dir)
    problems: dict[str, list[str]] = {}
    unique = pd.Series(list(dict.fromkeys(image_ids)), dtype=object)
    unsafe = set(unsafe_image_ids(unique))
    for image_id in unique:
        problem = "unsafe_image_id" if image_id in unsafe else check(image_dir / image_id, min_size)
        if problem:
            problems.setdefault(problem, []).append(image_id)
    return [Failure(kind, f"{len(ids)} image file(s): {kind.replace('_', ' ')}", None, ids[:MAX_LISTED_IDS], len(ids))
            for kind, ids in sorted(problems.items())]


# ----------------------------------------------------------------------------------------------------------- driver
def validate_dataset(data_dir: str | Path, min_positives: int = 1, image_check: str = "header",
                     min_size: int = 32) -> ValidationReport:
    """Validate a CXR-LT data directory (training CSV + images of training, dev and test lists)."""
    data_dir = Path(data_dir)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    report = ValidationReport()
    df = read_training_csv(data_dir / TRAINING_CSV, strict=False)
    failures, stats = validate_training_frame(df, min_positives)
    report.failures += failures
    report.statistics.update({"training_rows": len(df), **stats})
    ids = list(df["ImageID"].dropna()) if "ImageID" in df.columns else []
    for name in (DEV_LABELS_CSV, TEST_LABELS_CSV):
        if (data_dir / name).exists():
            ids += pd.read_csv(data_dir / name, dtype={"ImageID": str}, usecols=["ImageID"])["ImageID"].tolist()
    image_failures = check_images(ids, data_dir / IMAGES_DIR, image_check, min_size)
    report.failures += image_failures
    report.statistics.update({"images_checked": len(set(ids)) if image_check != "none" else 0,
                              "image_check": image_check})
    return report


def write_report(report: ValidationReport, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (out / "validation.md").write_text(report.to_markdown())
    return out / "validation.json", out / "validation.md"


def data_manifest_hash(data_dir: str | Path) -> str:
    """A short digest of what a training run reads: the CSVs' contents and, for every file under ``images/``, its
    name, size and modification time (a content digest of ~1 TB of PadChest PNGs would cost as much as a training
    epoch; size + mtime change whenever a file is rewritten). Recorded as the registered version's lineage."""
    import hashlib

    root = Path(data_dir)
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.csv")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    images = root / "images"
    if images.is_dir():
        for path in sorted(images.rglob("*")):
            if path.is_file():
                st = path.stat()
                digest.update(f"{path.relative_to(images).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
