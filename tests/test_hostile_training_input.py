"""Training-side inputs that come from files other steps can write: ImageIDs used as paths, cache names,
checkpoints, and output directories that commands replace."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrlt.data.dicom import array_to_dicom
from cxrlt.data.images import PreprocessConfig
from cxrlt.data.preprocess import CACHE_CONFIG, build_cache, cached_name
from cxrlt.data.split import read_manifest
from cxrlt.data.tables import TableError, read_id_list, read_training_csv
from cxrlt.errors import InvalidInputError
from cxrlt.outdir import OUTPUT_MARKER, claim_output_dir
from cxrlt.training.checkpoint import atomic_save, restore_checkpoint
from cxrlt.training.data import CacheMismatchError, ImageStore

UNSAFE_IDS = ["../outside.png", "sub/dir.png", "..", ".", "back\\slash.png", "nul\x00.png"]


def _training_csv(synth_data: Path, tmp_path: Path, image_id: str, row: int = 3) -> Path:
    df = pd.read_csv(synth_data / "CXRLT_2026_training.csv", dtype={"ImageID": str, "PatientID": str,
                                                                      "StudyDate_DICOM": str})
    df.loc[row, "ImageID"] = image_id
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("image_id", UNSAFE_IDS)
def test_an_image_id_that_is_not_a_plain_file_name_is_refused_naming_its_line(synth_data, tmp_path, image_id):
    path = _training_csv(synth_data, tmp_path, image_id, row=3)
    with pytest.raises(TableError, match=r"line 5: ") as info:  # header is line 1, row 0 is line 2
        read_training_csv(path)
    assert repr(image_id) in str(info.value)
    pd.DataFrame({"ImageID": ["ok.png", image_id]}).to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(TableError, match="line 3"):
        read_id_list(tmp_path / "ids.csv")


def test_plain_padchest_ids_pass(tmp_path):
    ids = ["216840111366964012283393834152009033102258826_m6pu4x.png", "a.b.c.dcm", "x..png", "...png"]
    pd.DataFrame({"ImageID": ids}).to_csv(tmp_path / "ids.csv", index=False)
    assert read_id_list(tmp_path / "ids.csv") == ids


def test_validation_reports_unsafe_ids_and_never_opens_them(synth_data, tmp_path):
    from cxrlt.data.validate import validate_dataset

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    secret = tmp_path / "outside.png"
    cv2.imwrite(str(secret), np.zeros((64, 64), np.uint8))  # would pass the image check if it were opened
    _training_csv(synth_data, tmp_path, "../outside.png").replace(data / "CXRLT_2026_training.csv")
    report = validate_dataset(data, image_check="header")
    by_check = {f.check: f for f in report.failures}
    assert by_check["safe_image_id"].image_ids == ["../outside.png"]
    assert by_check["unsafe_image_id"].image_ids == ["../outside.png"]


def test_the_cache_skips_unsafe_ids_and_writes_nothing_outside(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "good.png"), np.full((40, 40), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "outside.png"), np.full((40, 40), 100, np.uint8))
    out = tmp_path / "cache" / "deep"
    report = build_cache(["good.png", "../../outside.png", "../outside.png"], images, out,
                         PreprocessConfig(size=32), progress=False)
    assert report.written == 1 and set(report.failures) == {"../../outside.png", "../outside.png"}
    assert all("not a plain file name" in why for why in report.failures.values())
    assert sorted(p.name for p in out.iterdir()) == sorted([CACHE_CONFIG, "failures.csv", "good.png.png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "images", "outside.png"]


def test_two_sources_with_one_stem_get_two_cache_files(tmp_path):
    """``a.png`` and ``a.dcm`` are different images: each keeps its own cache file and its own pixels."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.tile(np.arange(40, dtype=np.uint8)[None, :] * 6, (40, 1)))
    array_to_dicom(np.tile(np.arange(40, dtype=np.uint16)[:, None] * 100, (1, 40)), images / "a.dcm")
    out = tmp_path / "cache"
    report = build_cache(["a.png", "a.dcm"], images, out, PreprocessConfig(size=32), progress=False)
    assert report.written == 2 and report.ok
    assert cached_name("a.png") != cached_name("a.dcm")
    png = cv2.imread(str(out / cached_name("a.png")), cv2.IMREAD_UNCHANGED)
    dcm = cv2.imread(str(out / cached_name("a.dcm")), cv2.IMREAD_UNCHANGED)
    assert png.std(axis=0).max() == 0 and dcm.std(axis=1).max() == 0  # constant columns vs constant rows


def test_a_cache_of_the_old_layout_is_refused_not_misread(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_CONFIG).write_text(json.dumps(PreprocessConfig(size=32).to_dict()))  # no "layout": layout 1
    with pytest.raises(CacheMismatchError, match="layout 1.*layout 2"):
        ImageStore(tmp_path / "images", PreprocessConfig(size=32), cache, cache_size=32)


def test_a_manifest_on_the_volume_is_checked_again(tmp_path):
    pd.DataFrame({"ImageID": ["ok.png", "../etc/passwd"], "PatientID": ["1", "2"], "view": ["frontal"] * 2}
                 ).to_csv(tmp_path / "train_frontal.csv", index=False)
    with pytest.raises(TableError, match=r"line 3: '\.\./etc/passwd'"):
        read_manifest(tmp_path / "train_frontal.csv")


class _Planted:
    """Unpickling this would run code: a checkpoint must never be read that way."""

    def __reduce__(self):
        return (Path.touch, (Path(_Planted.target),))

    target = ""


def test_resume_reads_checkpoints_without_running_code(tmp_path):
    model = torch.nn.Linear(2, 2)
    atomic_save({"model": model.state_dict(), "epoch": 0, "best": 0.5, "best_epoch": 0,
                 "history": [{"epoch": 0, "train_loss": 0.25}]}, tmp_path / "last.pt")
    assert restore_checkpoint(tmp_path / "last.pt", model=torch.nn.Linear(2, 2)) == (
        1, 0.5, 0, [{"epoch": 0, "train_loss": 0.25}])
    _Planted.target = str(tmp_path / "pwned")
    torch.save({"model": model.state_dict(), "epoch": 0, "best": 0.5, "best_epoch": 0, "history": [_Planted()]},
               tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        restore_checkpoint(tmp_path / "evil.pt", model=torch.nn.Linear(2, 2))
    assert not (tmp_path / "pwned").exists()


def test_output_directories_replace_only_what_cxrlt_wrote(tmp_path):
    mine = claim_output_dir(tmp_path / "new" / "out", "test")
    (mine / "old.txt").write_text("from the last run")
    assert claim_output_dir(mine, "test") == mine and sorted(p.name for p in mine.iterdir()) == [OUTPUT_MARKER]
    empty = tmp_path / "empty"
    (empty / "lost+found").mkdir(parents=True)  # a fresh volume's mount point
    claim_output_dir(empty, "test")
    assert (empty / "lost+found").is_dir() and (empty / OUTPUT_MARKER).is_file()
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(InvalidInputError, match=r"home is not empty \(thesis.tex\).*nothing was removed"):
        claim_output_dir(home, "test")
    assert (home / "thesis.tex").read_text() == "years of work" and not (home / OUTPUT_MARKER).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="is a file"):
        claim_output_dir(tmp_path / "file", "test")


def test_serve_build_and_export_refuse_a_folder_they_did_not_write(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from cxrlt.cli import app

    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.md").write_text("keep me")
    runner = CliRunner()
    served = tmp_path / "served"
    assert runner.invoke(app, ["export", "--ensemble", str(tiny_bundle / "ensemble"), "--out", str(served)]
                         ).exit_code == 0
    assert (served / OUTPUT_MARKER).is_file()
    for args in (["export", "--ensemble", str(tiny_bundle / "ensemble"), "--out", str(home)],
                 ["serve", "build", "--bundle", str(served), "--out", str(home)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert "not empty (notes.md)" in result.output and "Traceback" not in result.output
        assert (home / "notes.md").read_text() == "keep me"
