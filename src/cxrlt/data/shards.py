"""A preprocess cache that reads at GPU rates: memory-mapped uint16 shards with an index.

A 512 px 16-bit PNG costs a few milliseconds of zlib per read; a GPU step of the paper's PCAM member wants an image
every millisecond. Here the same preprocessed squares (what :mod:`cxrlt.data.preprocess` writes as PNGs) lie
uncompressed in ``shard-NNNNN.u16`` files, ``shard_images`` per file, each one ``(rows, size, size)`` little-endian
uint16 in C order; ``index.csv`` maps ``ImageID`` to ``(shard, row)``. A read is a page-cache copy. 160,000 PadChest
images at 512 px take 84 GB uncompressed.

Written shard by shard, each in one worker, to a temporary name that is renamed when complete; the index and
``cache_config.json`` (the contract plus ``layout``) are written last, so an interrupted build leaves no index that
names a half-written shard. A build into an existing cache of the same contract adds only the missing images, in new
shards; a bad image goes to ``failures.csv`` and the rest are kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrlt.data.images import ImageReadError, PreprocessConfig, load_preprocessed, to_uint16
from cxrlt.data.preprocess import CACHE_CONFIG, FAILURES_CSV, CacheReport
from cxrlt.data.tables import unsafe_image_ids
from cxrlt.errors import InvalidInputError

#: the ``layout`` value of a shard cache in ``cache_config.json`` (a PNG cache has an integer layout)
SHARD_LAYOUT = "u16-shards-1"
INDEX_CSV = "index.csv"


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.u16"


def shards_config(cfg: PreprocessConfig) -> dict:
    return {**cfg.to_dict(), "layout": SHARD_LAYOUT}


def _write_shard(args: tuple[int, list[str], str, str, dict]) -> tuple[int, list[str], dict[str, str]]:
    """Preprocess ``ids`` into one shard; returns (shard, the IDs in row order, failures)."""
    number, ids, image_dir, out_dir, cfg_dict = args
    cfg = PreprocessConfig.from_dict(cfg_dict)
    final = Path(out_dir) / shard_name(number)
    tmp = final.with_suffix(".u16.tmp")
    rows, failures = [], {}
    with open(tmp, "wb") as f:
        for image_id in ids:
            try:
                img = to_uint16(load_preprocessed(Path(image_dir) / image_id, cfg))
            except (ImageReadError, OSError) as exc:
                failures[image_id] = str(exc)
                continue
            f.write(np.ascontiguousarray(img, dtype="<u2").tobytes())
            rows.append(image_id)
    os.replace(tmp, final)
    return number, rows, failures


def build_shards(image_ids: Iterable[str], image_dir: str | Path, out_dir: str | Path, cfg: PreprocessConfig,
                 workers: int = 1, shard_images: int = 1024, progress: bool = True) -> CacheReport:
    """Preprocess the images of ``image_dir`` into a shard cache in ``out_dir``; see the module docstring."""
    if shard_images < 1:
        raise InvalidInputError(f"shard_images must be at least 1; got {shard_images}")
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = shards_config(cfg)
    index = pd.DataFrame(columns=["ImageID", "shard", "row"])
    if (out_dir / CACHE_CONFIG).exists():
        existing = json.loads((out_dir / CACHE_CONFIG).read_text())
        if existing != wanted:
            raise InvalidInputError(f"{out_dir} holds a cache made with {existing}, not {wanted}; use another --out")
        index = read_index(out_dir)
    report = CacheReport()
    unique = pd.Series(list(dict.fromkeys(image_ids)), dtype=object)
    for unsafe in unsafe_image_ids(unique):
        report.failures[str(unsafe)] = "ImageID is not a plain file name (path separator, '.', '..' or control " \
                                       "character)"
    done = set(index["ImageID"])
    todo = [i for i in unique if i not in report.failures and i not in done]
    report.skipped = sum(1 for i in unique if i in done)
    first = int(index["shard"].max()) + 1 if len(index) else 0
    jobs = [(first + k, todo[s:s + shard_images], str(image_dir), str(out_dir), cfg.to_dict())
            for k, s in enumerate(range(0, len(todo), shard_images))]
    parts = [index]
    bar = tqdm(total=len(todo), desc=f"shards {cfg.size}px", unit="img", disable=not progress)

    def record(number: int, rows: list[str], failures: dict[str, str]) -> None:
        parts.append(pd.DataFrame({"ImageID": rows, "shard": number, "row": range(len(rows))}))
        report.written += len(rows)
        report.failures.update(failures)
        bar.update(len(rows) + len(failures))

    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, os.cpu_count() or 1)) as pool:
            for result in pool.map(_write_shard, jobs):
                record(*result)
    else:
        for job in jobs:
            record(*_write_shard(job))
    bar.close()
    merged = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else index
    merged.to_csv(out_dir / (INDEX_CSV + ".tmp"), index=False)
    os.replace(out_dir / (INDEX_CSV + ".tmp"), out_dir / INDEX_CSV)
    (out_dir / CACHE_CONFIG).write_text(json.dumps(wanted))
    pd.DataFrame(sorted(report.failures.items()), columns=["ImageID", "error"]).to_csv(out_dir / FAILURES_CSV,
                                                                                         index=False)
    return report


def read_index(cache_dir: Path) -> pd.DataFrame:
    if not (Path(cache_dir) / INDEX_CSV).exists():
        raise InvalidInputError(f"{cache_dir}: a shard cache without {INDEX_CSV} (an interrupted build?); build it "
                                "again with cxrlt data preprocess --format shards")
    return pd.read_csv(Path(cache_dir) / INDEX_CSV, dtype={"ImageID": str, "shard": int, "row": int})


class ShardCache:
    """Reads one image of a shard cache as its (size, size) uint16 array; shards are memory-mapped on first use (in
    each loader process, so forked workers share the page cache, not file handles)."""

    def __init__(self, cache_dir: str | Path, size: int):
        self.cache_dir, self.size = Path(cache_dir), int(size)
        index = read_index(self.cache_dir)
        self._where = dict(zip(index["ImageID"], zip(index["shard"], index["row"], strict=True), strict=True))
        self._maps: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _shard(self, number: int) -> np.ndarray:
        if self._pid != os.getpid():  # a forked worker maps the files itself
            self._maps, self._pid = {}, os.getpid()
        if number not in self._maps:
            path = self.cache_dir / shard_name(number)
            rows, rest = divmod(path.stat().st_size, self.size * self.size * 2)
            if rest:
                raise InvalidInputError(f"{path}: {path.stat().st_size} bytes is not a whole number of "
                                        f"{self.size} px uint16 images; build the cache again")
            self._maps[number] = np.memmap(path, dtype="<u2", mode="r", shape=(rows, self.size, self.size))
        return self._maps[number]

    def load(self, image_id: str) -> np.ndarray:
        number, row = self._where[image_id]
        return np.array(self._shard(number)[row])
