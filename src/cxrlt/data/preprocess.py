"""``cxrlt data preprocess``: materialise a square, resized, 16-bit image cache in parallel.

The cache holds exactly what the models see (percentile-clipped, zero-padded, resized) so training never decodes
full-size PNGs twice. It is idempotent (an image already cached with the same settings is skipped), and a bad file
is reported in ``failures.csv`` without losing the good images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrlt.data.images import ImageReadError, PreprocessConfig, load_preprocessed, to_uint16, write_png16
from cxrlt.data.tables import IMAGES_DIR, check_image_ids, unsafe_image_ids
from cxrlt.errors import InvalidInputError

CACHE_CONFIG = "cache_config.json"
FAILURES_CSV = "failures.csv"


@dataclass
class CacheReport:
    written: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


#: how cache files are named; stored in the cache's config so that a cache of another layout is refused, not misread
#: (layout 2: ``<ImageID>.png`` for every source, so ``a.png`` and ``a.dcm`` never share a file)
CACHE_LAYOUT = 2


def cached_name(image_id: str) -> str:
    """Cache file name for an ImageID: the whole ID plus ``.png`` (the cache is 16-bit PNG whatever the source), so
    that two sources never map to one file."""
    return image_id + ".png"


def cache_config(cfg: PreprocessConfig) -> dict:
    """What ``cache_config.json`` holds: the preprocessing contract and the file layout."""
    return {**cfg.to_dict(), "layout": CACHE_LAYOUT}


def _one(args: tuple[str, str, str, dict]) -> tuple[str, str | None]:
    image_id, src, dst, cfg = args
    try:
        img = load_preprocessed(src, PreprocessConfig.from_dict(cfg))
        write_png16(dst, to_uint16(img))
        return image_id, None
    except (ImageReadError, OSError) as exc:
        return image_id, str(exc)


def build_cache(image_ids: Iterable[str], image_dir: str | Path, out_dir: str | Path, cfg: PreprocessConfig,
                workers: int = 1, progress: bool = True) -> CacheReport:
    """Preprocess each image of ``image_dir`` into ``out_dir``; see the module docstring for the guarantees."""
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / CACHE_CONFIG
    wanted = cache_config(cfg)
    if cfg_path.exists():
        existing = json.loads(cfg_path.read_text())
        if existing != wanted:
            raise InvalidInputError(f"{out_dir} holds a cache made with {existing}, not {wanted}; use another --out")
    else:
        cfg_path.write_text(json.dumps(wanted))
    report = CacheReport()
    todo = []
    unique = pd.Series(list(dict.fromkeys(image_ids)), dtype=object)
    for unsafe in unsafe_image_ids(unique):  # never used as a path, reported like any unreadable image
        report.failures[str(unsafe)] = "ImageID is not a plain file name (path separator, '.', '..' or control " \
                                       "character)"
    for image_id in unique:
        if image_id in report.failures:
            continue
        dst = out_dir / cached_name(image_id)
        if dst.exists():
            report.skipped += 1
        else:
            todo.append((image_id, str(image_dir / image_id), str(dst), cfg.to_dict()))
    bar = tqdm(total=len(todo), desc=f"preprocess {cfg.size}px", unit="img", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(workers, os.cpu_count() or 1)) as pool:
            results = pool.map(_one, todo, chunksize=max(1, min(64, len(todo) // (4 * workers))))
            for image_id, err in results:
                _record(report, image_id, err)
                bar.update()
    else:
        for job in todo:
            _record(report, *_one(job))
            bar.update()
    bar.close()
    failures = pd.DataFrame(sorted(report.failures.items()), columns=["ImageID", "error"])
    failures.to_csv(out_dir / FAILURES_CSV, index=False)
    return report


def _record(report: CacheReport, image_id: str, err: str | None) -> None:
    if err is None:
        report.written += 1
    else:
        report.failures[image_id] = err


def load_eval_images(data_dir: Path, labels_csv: str, preprocess: PreprocessConfig
                     ) -> tuple[pd.DataFrame, np.ndarray]:
    """The labelled images of ``labels_csv`` as [0, 1] squares under a model's preprocessing contract."""
    labels = pd.read_csv(Path(data_dir) / labels_csv, dtype={"ImageID": str})
    check_image_ids(labels["ImageID"], Path(data_dir) / labels_csv)
    return labels, np.stack([load_preprocessed(Path(data_dir) / IMAGES_DIR / i, preprocess)
                             for i in labels["ImageID"]])
