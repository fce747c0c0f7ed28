"""The uint16 shard cache (cxrlt.data.shards): the same pixels as the PNG cache, incremental, and loud when broken."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlt.cli import app
from cxrlt.data.images import PreprocessConfig
from cxrlt.data.preprocess import CACHE_CONFIG, build_cache
from cxrlt.data.shards import INDEX_CSV, ShardCache, build_shards, shard_name
from cxrlt.errors import InvalidInputError
from cxrlt.training.data import CacheMismatchError, ImageStore


def _ids(data, n=None):
    ids = pd.read_csv(data / "CXRLT_2026_training.csv", dtype={"ImageID": str})["ImageID"].tolist()
    return ids[:n] if n else ids


def test_shards_hold_the_png_caches_pixels(synth_data, tmp_path):
    ids, cfg = _ids(synth_data, 50), PreprocessConfig(size=48)
    build_cache(ids, synth_data / "images", tmp_path / "png", cfg, progress=False)
    report = build_shards(ids, synth_data / "images", tmp_path / "shards", cfg, shard_images=16, progress=False)
    assert (report.written, report.skipped, report.failures) == (50, 0, {})
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.u16")) == [shard_name(i) for i in range(4)]
    assert (tmp_path / "shards" / shard_name(3)).stat().st_size == 2 * 48 * 48 * 2  # 50 = 3 x 16 + 2 rows
    contract = PreprocessConfig(size=32)  # the network input; both caches are resized to it alike
    png, shards = (ImageStore(synth_data / "images", contract, tmp_path / name) for name in ("png", "shards"))
    assert shards.shards is not None and len(shards.shards) == 50
    for image_id in ids:
        np.testing.assert_array_equal(shards.load(image_id), png.load(image_id))
    raw = ImageStore(synth_data / "images", PreprocessConfig(size=48))
    cached = ImageStore(synth_data / "images", PreprocessConfig(size=48), tmp_path / "shards")
    # the cache rounds to 16 bits: within half a step of the raw preprocessing
    assert np.abs(cached.load(ids[0]) - raw.load(ids[0])).max() <= 0.5 / 65535 + 1e-7


def test_a_second_build_adds_only_the_missing_images(synth_data, tmp_path):
    ids, cfg = _ids(synth_data, 30), PreprocessConfig(size=32)
    build_shards(ids[:20], synth_data / "images", tmp_path, cfg, shard_images=8, progress=False)
    first = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.u16")}
    report = build_shards(ids, synth_data / "images", tmp_path, cfg, shard_images=8, workers=2, progress=False)
    assert (report.written, report.skipped) == (10, 20)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.u16") if p.name in first} == first
    index = pd.read_csv(tmp_path / INDEX_CSV, dtype={"ImageID": str})
    assert sorted(index["ImageID"]) == sorted(ids) and set(index["shard"]) == set(range(5))
    cache = ShardCache(tmp_path, 32)
    raw = ImageStore(synth_data / "images", cfg)
    for image_id in (ids[0], ids[25]):
        assert np.abs(cache.load(image_id) / 65535.0 - raw.load(image_id)).max() <= 0.5 / 65535 + 1e-7
    with pytest.raises(InvalidInputError, match="holds a cache made with"):
        build_shards(ids, synth_data / "images", tmp_path, PreprocessConfig(size=64), progress=False)


def test_a_bad_image_is_reported_and_the_rest_kept(synth_data, tmp_path):
    ids = _ids(synth_data, 6)
    images = tmp_path / "images"
    shutil.copytree(synth_data / "images", images, ignore=lambda d, names: [n for n in names if n not in ids])
    (images / ids[2]).write_bytes(b"not an image")
    report = build_shards([*ids, "../escape.png"], images, tmp_path / "c", PreprocessConfig(size=32),
                          progress=False)
    assert report.written == 5 and set(report.failures) == {ids[2], "../escape.png"}
    failures = pd.read_csv(tmp_path / "c" / "failures.csv")
    assert set(failures["ImageID"]) == {ids[2], "../escape.png"}
    cache = ShardCache(tmp_path / "c", 32)
    assert ids[2] not in cache and all(i in cache for i in ids if i != ids[2])
    assert cache.load(ids[3]).shape == (32, 32)


def test_broken_caches_are_refused_by_name(synth_data, tmp_path):
    ids, cfg = _ids(synth_data, 4), PreprocessConfig(size=32)
    build_shards(ids, synth_data / "images", tmp_path, cfg, progress=False)
    with open(tmp_path / shard_name(0), "ab") as f:
        f.write(b"\0" * 7)  # a torn write
    with pytest.raises(InvalidInputError, match="not a whole number of 32 px"):
        ShardCache(tmp_path, 32).load(ids[0])
    (tmp_path / INDEX_CSV).unlink()  # an interrupted build never wrote it
    with pytest.raises(InvalidInputError, match="--format shards"):
        ShardCache(tmp_path, 32)
    config = json.loads((tmp_path / CACHE_CONFIG).read_text())
    (tmp_path / CACHE_CONFIG).write_text(json.dumps({**config, "layout": "u16-shards-9"}))
    with pytest.raises(CacheMismatchError, match="u16-shards-9"):
        ImageStore(synth_data / "images", cfg, tmp_path)


def test_cli_builds_shards(synth_data, tmp_path):
    result = CliRunner().invoke(app, ["data", "preprocess", "--data", str(synth_data), "--out", str(tmp_path),
                                      "--size", "32", "--format", "shards", "--shard-images", "256"])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output
    from cxrlt.data.tables import DEV_LABELS_CSV, TEST_LABELS_CSV, TRAINING_CSV, read_id_list

    expected = {i for name in (TRAINING_CSV, DEV_LABELS_CSV, TEST_LABELS_CSV) if (synth_data / name).exists()
                for i in read_id_list(synth_data / name)}
    cache = ShardCache(tmp_path, 32)
    assert len(cache) == len(expected) > 0 and all(i in cache for i in expected)
