"""Drift of served traffic: the histograms, the PSI and chi-square by hand, and the judgement of constructed windows
(an unshifted one, a switch to 8-bit exports, a mostly lateral one)."""

import math

import numpy as np
import pytest

from cxrlt.drift import (
    SCORE_EDGES,
    DriftSettings,
    chi_square_p,
    compare,
    declared_bit_depth,
    psi,
    reference_features,
    score_histogram,
)


def test_score_bins_are_the_entrys_with_prometheus_le_semantics():
    from serving.models._observe import SCORE_BUCKETS

    assert tuple(SCORE_BUCKETS) == SCORE_EDGES
    # bin i holds edge[i-1] < p <= edge[i]: a value on an edge is in that edge's bin, as Prometheus' le counts it
    counts = score_histogram([0.0, 0.05, 0.0500001, 0.95, 0.96, 1.0])
    assert counts[0] == 2 and counts[1] == 1 and counts[10] == 1 and counts[11] == 2 and sum(counts) == 6


def test_psi_and_chi_square_by_hand():
    from scipy.stats import chi2

    # shares 0.5/0.5 -> 0.9/0.1: (0.9-0.5) ln(0.9/0.5) + (0.1-0.5) ln(0.1/0.5)
    assert psi([50, 50], [90, 10], epsilon=0) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5), abs=1e-12)
    assert psi([50, 50], [50, 50]) == pytest.approx(0.0, abs=1e-12)
    # expected counts 70/30 in both rows: chi2 = 2 * (20^2/70 + 20^2/30), 1 degree of freedom
    statistic = 2 * (400 / 70 + 400 / 30)
    assert chi_square_p([50, 50], [90, 10]) == pytest.approx(chi2.sf(statistic, 1), rel=1e-9)
    assert chi_square_p([50, 50, 0], [90, 10, 0]) == pytest.approx(chi2.sf(statistic, 1), rel=1e-9), \
        "a bin empty on both sides is left out"


def _reference(rng, n=400):
    scores = {"Nodule": rng.beta(1, 8, n), "Cardiomegaly": rng.beta(2, 5, n)}
    lateral = int(round(n * 0.325))
    return reference_features(scores, ["frontal"] * (n - lateral) + ["lateral"] * lateral, ["16"] * n), scores


def _window(rng, n, lateral_share=0.325, bits8=0.0, nodule=(1, 8)):
    scores = {"Nodule": rng.beta(*nodule, n), "Cardiomegaly": rng.beta(2, 5, n)}
    lateral = int(round(n * lateral_share))
    eight = int(round(n * bits8))
    return reference_features(scores, ["frontal"] * (n - lateral) + ["lateral"] * lateral,
                              ["8"] * eight + ["16"] * (n - eight))


def test_an_unshifted_window_is_not_flagged_and_constructed_shifts_are():
    rng = np.random.default_rng(0)
    reference, _ = _reference(rng)
    same = compare(reference, _window(rng, 600), 600)
    assert same.judged and not same.drifted and not same.retrain
    eight_bit = compare(reference, _window(rng, 600, bits8=0.9), 600)
    assert eight_bit.drifted == ["bits"] and eight_bit.retrain and "input mix drifted (bits)" in eight_bit.reason
    lateral = compare(reference, _window(rng, 600, lateral_share=0.8), 600)
    assert lateral.drifted == ["view"] and lateral.retrain
    nodule = compare(reference, _window(rng, 600, nodule=(3, 3)), 600)
    assert nodule.drifted == ["score:Nodule"] and nodule.retrain, "1 of 2 findings is over the 20 % share"
    small = compare(reference, _window(rng, 100, bits8=1.0), 100)
    assert not small.judged and not small.retrain and "fewer than 200" in small.reason
    # a real but tiny difference over a huge window: significant, yet under the PSI floor, so not drift
    big = compare(_reference(rng, 100_000)[0], _window(rng, 200_000, lateral_share=0.35), 200_000)
    view = next(f for f in big.features if f.feature == "view")
    assert view.p_value < 1e-6 and view.psi < DriftSettings().min_psi and not view.drifted


def test_declared_bit_depth_agrees_with_the_entrys(tmp_path):
    import cv2

    from cxrlt.data.dicom import array_to_dicom
    from serving.models._observe import bit_depth

    img16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), img16)
    cv2.imwrite(str(tmp_path / "b.png"), (img16 >> 8).astype(np.uint8))
    dcm = array_to_dicom(img16, tmp_path / "c.dcm")
    (tmp_path / "d.bin").write_bytes(b"not an image")
    for path in (tmp_path / "a.png", tmp_path / "b.png", dcm, tmp_path / "d.bin"):
        assert declared_bit_depth(path) == bit_depth(path.read_bytes())
    assert [declared_bit_depth(tmp_path / n) for n in ("a.png", "b.png", "d.bin")] == ["16", "8", "unknown"]
