"""Task 1 calibration: a known miscalibration is fixed, rankings are untouched, too-rare classes take the pooled map."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cxrlt.ensemble import calibrate, fit_calibration
from cxrlt.metrics import calibration_error

CLASSES = ["a", "b", "c"]


def _overconfident(seed: int = 0, n: int = 6000, factor: float = 3.0):
    """True probability sigmoid(z); the model reports sigmoid(factor * z - 0.5): overconfident and biased."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, (n, len(CLASSES)))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(int)
    return 1 / (1 + np.exp(-(factor * z - 0.5))), y


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_known_miscalibration_is_fixed(method):
    p, y = _overconfident()
    cal = fit_calibration(p[:3000], y[:3000], CLASSES, method)  # fitted on one half (validation) ...
    fixed = calibrate(p[3000:], cal, CLASSES)  # ... and judged on the other
    before = np.mean([calibration_error(p[3000:, j], y[3000:, j]) for j in range(3)])
    after = np.mean([calibration_error(fixed[:, j], y[3000:, j]) for j in range(3)])
    assert before > 0.08 and after < before / 2 and after < 0.04
    if method == "platt":  # the exact inverse: slope 1/3, bias 0.5/3
        assert cal["a"]["a"] == pytest.approx(1 / 3, rel=0.1) and cal["b"]["a"] == pytest.approx(0.5 / 3, abs=0.08)
    for j in range(3):  # monotonic per class: AP unchanged
        assert average_precision_score(y[3000:, j], fixed[:, j]) == pytest.approx(
            average_precision_score(y[3000:, j], p[3000:, j]), abs=1e-9)


def test_too_rare_classes_take_the_pooled_map_and_none_is_identity():
    p, y = _overconfident(1, 3000)
    y[:, 2] = 0
    y[:2, 2] = 1  # two positives on validation: too few for the class's own fit
    cal = fit_calibration(p, y, CLASSES, "platt")
    assert cal["pooled_classes"] == ["c"] and (cal["a"]["c"], cal["b"]["c"]) == tuple(cal["pooled"])
    # the classes share one overconfidence (slope 1/3 undoes it); the pooled fit shrinks logits the same way (class c's
    # emptied labels pull it a little lower)
    assert 0.15 < cal["pooled"][0] < 0.45 and cal["a"]["a"] == pytest.approx(1 / 3, rel=0.1)
    np.testing.assert_allclose(calibrate(p, fit_calibration(p, y, CLASSES, "none"), CLASSES), p, rtol=1e-6)
    np.testing.assert_allclose(calibrate(p, None, CLASSES), p)


def test_pooled_map_fixes_an_inflated_rare_class():
    """ASL-like inflation of a rare class (too few positives on validation for its own fit) is removed by the pooled
    map, which identity would keep."""
    rng = np.random.default_rng(3)
    p, y = _overconfident(2, 4000)
    z = rng.normal(-5.0, 1.0, 4000)  # a ~1 % class ...
    y[:, 2] = rng.random(4000) < 1 / (1 + np.exp(-z))
    p[:, 2] = 1 / (1 + np.exp(-(3.0 * z - 0.5)))  # ... reported with the same overconfidence as the others
    val, held = slice(0, 2000), slice(2000, None)
    keep = np.flatnonzero(y[val, 2] == 1)[2:]  # leave 2 positives on validation: the class cannot be fitted alone
    y_val = y[val].copy()
    y_val[keep, 2] = 0
    cal = fit_calibration(p[val], y_val, CLASSES, "platt")
    assert "c" in cal["pooled_classes"]
    before = calibration_error(p[held, 2], y[held, 2])
    after = calibration_error(calibrate(p[held], cal, CLASSES)[:, 2], y[held, 2])
    assert after < before / 2, (before, after)


def test_calibration_is_fitted_on_the_served_validation_output():
    """With a router each validation image counts once, with its own view's ensemble (mixed where its view has
    none), so the calibration is one per-class map of what is served."""
    import pandas as pd

    from cxrlt.ensemble import served_validation

    cols = ["x"]
    views = {"frontal": pd.DataFrame({"x": [0.1, 0.2]}, index=["f1", "f2"]),
             "mixed": pd.DataFrame({"x": [0.5, 0.6, 0.7]}, index=["f1", "f2", "l1"])}
    routed = served_validation(views, routed=True)
    assert list(routed.index) == ["f1", "f2", "l1"] and routed.loc["l1", "x"] == 0.7 and routed.loc["f1", "x"] == 0.1
    assert list(served_validation(views, routed=False).index) == ["f1", "f2", "l1"]
    assert list(routed.columns) == cols
