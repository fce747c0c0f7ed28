"""Label-synthesised reports with dynamic shuffling, and the guard that keeps held-out classes out of training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrlt.errors import CxrltError
from cxrlt.labels import NORMAL
from cxrlt.zeroshot.bank import Finding, mentions


class LeakError(CxrltError, RuntimeError):
    """A held-out class (name, description or label) reached the training data."""


def synth_report(positives: Sequence[str], bank: dict[str, Finding], rng: np.random.Generator) -> str:
    """One random description per positive finding, in a fresh random order; the normal text when none."""
    findings = [p for p in positives if p != NORMAL]
    if not findings:
        normal = bank[NORMAL].descriptions
        return normal[int(rng.integers(len(normal)))]
    order = rng.permutation(len(findings))
    parts = []
    for i in order:
        options = bank[findings[i]].descriptions
        parts.append(options[int(rng.integers(len(options)))])
    return ". ".join(parts) + "."


class LeakGuard:
    """Fails loudly if any held-out class name, description or label reaches training."""

    def __init__(self, held_out: Sequence[str], bank: dict[str, Finding]):
        self.held_out = [bank[c] for c in held_out]
        self.keys = {c for c in held_out}

    def check_classes(self, classes: Sequence[str]) -> None:
        leaked = self.keys & set(classes)
        if leaked:
            raise LeakError(f"held-out classes {sorted(leaked)} are in the training targets")

    def check_texts(self, texts: Sequence[str]) -> None:
        for text in texts:
            for finding in self.held_out:
                if mentions(text, finding):
                    raise LeakError(f"held-out class {finding.key!r} leaked into training text: {text!r}")

    def check_labels(self, positives_per_image: Sequence[Sequence[str]]) -> None:
        for positives in positives_per_image:
            leaked = self.keys & set(positives)
            if leaked:
                raise LeakError(f"training image is positive for held-out classes {sorted(leaked)}")
