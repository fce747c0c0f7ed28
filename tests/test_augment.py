"""The loader's augmentation and the same augmentation on the training device; loader workers sized from the
machine."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrlt.machine import loader_workers
from cxrlt.training.augment import AugmentConfig, DeviceAugment, augment, clahe, clahe_tiles, sampling_grid_matrices


def _radiograph(size: int = 64) -> np.ndarray:
    """A smooth [0, 1] test image (a blob and a bar), so bilinear resampling is compared away from sharp edges."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 + 0.4 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) / 0.05)
    img[size // 6 : size // 3, size // 2 : size * 3 // 4] += 0.2
    return cv2.GaussianBlur(img.astype(np.float32), (5, 5), 1.5)


def _warp_on_device(img: np.ndarray, flip: bool, angle: float, scale: float, shift: tuple[float, float]):
    h, w = img.shape
    theta = sampling_grid_matrices(torch.tensor([flip]), torch.tensor([angle]), torch.tensor([scale]),
                                   torch.tensor([list(shift)]), h, w).float()
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    return F.grid_sample(torch.from_numpy(img)[None, None], grid, align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("flip", [False, True])
def test_device_affine_samples_what_opencv_writes(flip):
    img = _radiograph()
    angle, scale, shift = 13.0, 1.07, (2.5, -1.25)
    m = cv2.getRotationMatrix2D((32, 32), angle, scale)
    m[:, 2] += shift
    src = np.ascontiguousarray(img[:, ::-1] if flip else img)
    expected = cv2.warpAffine(src, m, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    np.testing.assert_allclose(_warp_on_device(img, flip, angle, scale, shift), expected, atol=1e-4)


def test_sampling_matrix_by_hand():
    # identity: u' = u; a flip alone: u' = -u (N F N^-1 with F: x -> w - 1 - x is x -> -x in [-1, 1]);
    # a shift of +4 px on a 64 px image moves the content right, so the output reads 4 px to the left: 2 * 4 / 64
    h = w = 64
    none, flip = torch.tensor([False]), torch.tensor([True])
    zero, one = torch.tensor([0.0]), torch.tensor([1.0])
    torch.testing.assert_close(sampling_grid_matrices(none, zero, one, torch.zeros(1, 2), h, w)[0],
                               torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64))
    torch.testing.assert_close(sampling_grid_matrices(flip, zero, one, torch.zeros(1, 2), h, w)[0],
                               torch.tensor([[-1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64))
    torch.testing.assert_close(sampling_grid_matrices(none, zero, one, torch.tensor([[4.0, 0.0]]), h, w)[0],
                               torch.tensor([[1.0, 0, -0.125], [0, 1.0, 0]], dtype=torch.float64))
    # scale 2 about the centre: the output reads half as far from the centre
    torch.testing.assert_close(sampling_grid_matrices(none, zero, torch.tensor([2.0]), torch.zeros(1, 2), h, w)[0],
                               torch.tensor([[0.5, 0, 0.5 / 64], [0, 0.5, 0.5 / 64]], dtype=torch.float64))


def test_integer_shift_moves_pixels_exactly():
    img = _radiograph()
    out = _warp_on_device(img, False, 0.0, 1.0, (3.0, -2.0))
    # +3 px right and -2 px (up): out[y, x] = img[y + 2, x - 3]; the uncovered border is black, as OpenCV's
    np.testing.assert_allclose(out[:-2, 3:], img[2:, :-3], atol=1e-6)
    assert np.all(out[:, :3] == 0) and np.all(out[-2:, :] == 0)


def test_clahe_on_the_device_matches_opencv():
    from kornia.enhance import equalize_clahe

    img = _radiograph()
    tiles = clahe_tiles(64)
    expected = clahe(img, 2.0, tiles)
    got = equalize_clahe(torch.from_numpy(img)[None, None], 2.0, (tiles, tiles))[0, 0].numpy()
    # OpenCV returns 8-bit levels, kornia interpolates the same 256-bin maps in float: measured 0.007 mean, 0.03 max
    assert np.abs(got - expected).mean() < 0.01 and np.abs(got - expected).max() < 0.05
    assert np.abs(expected - img).max() > 0.1  # CLAHE did change the image


def test_loader_clahe_uses_256_bins():
    img = _radiograph()
    out = clahe(img, 2.0, clahe_tiles(64))
    levels = np.round(out * 255)
    np.testing.assert_allclose(out * 255, levels, atol=1e-4)  # 8-bit levels, as albumentations' CLAHE
    u8 = np.round(img * 255).astype(np.uint8)
    np.testing.assert_array_equal(levels.astype(np.uint8), cv2.createCLAHE(2.0, (4, 4)).apply(u8))


def test_device_augment_is_seeded_by_epoch_step_and_rank_and_normalises():
    cfg = AugmentConfig(flip_p=0.5, rotate_deg=20, scale=(0.9, 1.1), translate=0.05, clahe_p=0.5)
    aug = DeviceAugment(cfg, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed=7)
    x = torch.from_numpy(np.stack([_radiograph()] * 8))[:, None]
    a, b = aug(x, 1, 2), aug(x, 1, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for other in (aug(x, 1, 3), aug(x, 2, 2), aug(x, 1, 2, rank=1)):
        assert not torch.equal(a, other)
    assert a.shape == (8, 3, 64, 64) and a.dtype == torch.float32
    p = aug.parameters(4096, 0, 0)
    assert p["angle"].abs().max() <= 20 and p["scale"].min() >= 0.9 and p["scale"].max() <= 1.1
    assert p["shift"].abs().max() <= 0.05
    assert abs(p["flip"].float().mean() - 0.5) < 0.05 and abs(p["clahe"].float().mean() - 0.5) < 0.05
    no_flip = DeviceAugment(cfg, 1, (0.5,), (0.25,), allow_flip=False)
    assert not no_flip.parameters(256, 0, 0)["flip"].any()


def test_device_augment_equals_the_loader_path_for_the_same_draw():
    """With one image's parameters, the device path is the loader's flip -> affine -> CLAHE -> normalise."""
    cfg = AugmentConfig(clahe_p=1.0)
    aug = DeviceAugment(cfg, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = _radiograph()
    p = {"flip": torch.tensor([True]), "angle": torch.tensor([-7.0]), "scale": torch.tensor([0.95]),
         "shift": torch.tensor([[0.03, -0.02]]), "clahe": torch.tensor([False])}
    m = cv2.getRotationMatrix2D((32, 32), -7.0, 0.95)
    m[:, 2] += np.array([0.03, -0.02]) * 64
    loader = cv2.warpAffine(np.ascontiguousarray(img[:, ::-1]), m, (64, 64), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    got = aug.apply(torch.from_numpy(img)[None, None], p)
    torch.testing.assert_close(got, ((torch.from_numpy(loader) - 0.5) / 0.25).expand(1, 3, 64, 64),
                               atol=4e-4, rtol=0)
    p["clahe"] = torch.tensor([True])
    got = aug.apply(torch.from_numpy(img)[None, None], p)[0, 0].numpy() * 0.25 + 0.5
    assert np.abs(got - clahe(loader, 2.0, clahe_tiles(64))).mean() < 0.01


def test_cpu_augment_still_seeded_and_bounded():
    img = _radiograph()
    a = augment(img, np.random.default_rng([1, 2, 3]), AugmentConfig(clahe_p=1.0))
    assert a.min() >= 0 and a.max() <= 1 and a.dtype == np.float32


@pytest.mark.parametrize(("setting", "cpus", "processes", "expected"), [
    (4, 16, 1, 4),          # an integer is taken as it is
    ("auto", 16, 1, 15),    # one GPU: every core but the training process's own
    ("auto", 16, 8, 1),     # eight GPUs share 16 cores: 2 each, one for the process
    ("auto", 2, 1, 1),
    ("auto", 1, 1, 0),      # no core to spare: load in the process
    ("auto", 4, 8, 0),
])
def test_loader_workers(setting, cpus, processes, expected):
    assert loader_workers(setting, cpus, processes) == expected


def test_loader_workers_reads_the_pods_cpu_limit(tmp_path, monkeypatch):
    from cxrlt import machine

    (tmp_path / "cpu.max").write_text("300000 100000\n")  # limits.cpu: 3
    monkeypatch.setattr(machine, "CGROUP_ROOT", tmp_path)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda _: set(range(96)))
    assert machine.usable_cpus(tmp_path) == 3
    assert loader_workers("auto", machine.usable_cpus(tmp_path)) == 2


def test_a_member_trains_with_augmentation_on_the_device(synth_data, tmp_path):
    """The trainer's device path: with the augmentation reduced to the identity it computes the loader path's
    epochs (the normalisation moved to the device); with the profile's augmentation it trains, with workers sized
    from the machine."""
    import math

    from cxrlt.config import load_config
    from cxrlt.training.trainer import TrainRequest, train_member
    from tests.conftest import TINY_CONFIG

    identity = {"flip_p": 0.0, "rotate_deg": 0.0, "scale": [1.0, 1.0], "translate": 0.0, "clahe_p": 0.0}
    runs = {}
    for name, keys in (("loader", {"augment": identity}),
                       ("device", {"augment": identity, "augment_on": "device"}),
                       ("device-augmented", {"augment_on": "device", "num_workers": "auto"})):
        cfg = load_config({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], **keys}})
        runs[name] = [r["train_loss"] for r in train_member(
            TrainRequest("frontal/pcam", cfg, synth_data, tmp_path / name, progress=False))["history"]]
    assert runs["device"] == pytest.approx(runs["loader"], rel=1e-4)
    assert len(runs["device-augmented"]) == 2 and all(math.isfinite(v) for v in runs["device-augmented"])
    assert runs["device-augmented"] != pytest.approx(runs["device"], rel=1e-4)  # the augmentation did apply
