"""Plots people would rather look at than read: reliability diagrams and per-class AP grouped by band."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

BAND_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728", None: "#7f7f7f"}


def pyplot():
    """matplotlib's pyplot on the Agg backend (pipelines and servers have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(y_true: np.ndarray, y_prob: np.ndarray, path: str | Path, n_bins: int = 10,
                        title: str = "Reliability (all classes pooled)") -> Path:
    """Accuracy vs confidence per equal-width bin, with bin counts, for the flattened predictions."""
    plt = pyplot()
    y, p = np.asarray(y_true).ravel(), np.asarray(y_prob).ravel()
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = np.bincount(which, minlength=n_bins)
    freq = np.array([y[which == b].mean() if counts[b] else np.nan for b in range(n_bins)])
    conf = np.array([p[which == b].mean() if counts[b] else np.nan for b in range(n_bins)])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.bar(centres, freq, width=1 / n_bins, edgecolor="k", alpha=0.7, label="observed frequency")
    ax.plot(conf, freq, "o-", color="C3", label="observed frequency at each bin's mean confidence")
    ax.set_ylabel("fraction positive")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(centres, counts, width=1 / n_bins, edgecolor="k", color="C7")
    axc.set_yscale("log")
    axc.set_xlabel("predicted probability")
    axc.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def reliability_before_after(y_true: np.ndarray, before: np.ndarray, after: np.ndarray, path: str | Path,
                             n_bins: int = 10, title: str = "Task 1 calibration (all classes pooled)") -> Path:
    """Two reliability curves on one plot: the ensemble's probabilities before and after calibration."""
    plt = pyplot()
    y = np.asarray(y_true).ravel()
    edges = np.linspace(0, 1, n_bins + 1)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, probs, colour in (("before", before, "C7"), ("after", after, "C3")):
        p = np.asarray(probs).ravel()
        which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
        keep = [b for b in range(n_bins) if (which == b).any()]
        conf = [p[which == b].mean() for b in keep]
        freq = [y[which == b].mean() for b in keep]
        ece = sum((which == b).sum() * abs(f - c) for b, f, c in zip(keep, freq, conf, strict=True)) / len(p)
        ax.plot(conf, freq, "o-", color=colour, label=f"{name} calibration (pooled ECE {ece:.3f})")
    ax.set_xlabel("mean predicted probability in bin")
    ax.set_ylabel("observed frequency in bin")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def per_class_ap_chart(ap: Mapping[str, float | None], bands: Mapping[str, str], path: str | Path,
                       order: Sequence[str] | None = None, title: str = "Per-class AP by frequency band") -> Path:
    """Horizontal bars of AP per class, coloured and grouped head -> medium -> tail; unscored classes marked."""
    plt = pyplot()
    names = list(order or ap)
    rank = {"head": 0, "medium": 1, "tail": 2}
    names.sort(key=lambda n: (rank.get(bands.get(n), 3), -(ap[n] or -1)))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    y = np.arange(len(names))
    vals = [ap[n] if ap[n] is not None else 0.0 for n in names]
    ax.barh(y, vals, color=[BAND_COLOURS.get(bands.get(n)) for n in names])
    for i, n in enumerate(names):
        label = f"{ap[n]:.2f}" if ap[n] is not None else "no positives"
        ax.text(vals[i] + 0.01, i, label, va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("average precision")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=BAND_COLOURS[b]) for b in ("head", "medium", "tail")]
    ax.legend(handles, ["head (>10 %)", "medium (1-10 %)", "tail (<1 %)"], loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
