"""Description banks (clinical, versioned YAML; or the synthetic generator's attribute descriptions) and prompts.

Hybrid prompting uses class-name templates plus descriptions; embeddings of all prompts of a class are L2-normalised
and averaged (prompt ensembling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from cxrlt.errors import InvalidInputError
from cxrlt.labels import ALL_CLASSES, NORMAL, canonical_class

NAME_TEMPLATES = ("{}", "a chest x-ray showing {}")
NEGATIVE_TEMPLATE = "no {}"
PROMPT_MODES = ("names", "descriptions", "hybrid")
BANKS = ("clinical", "synthetic")


@dataclass(frozen=True)
class Finding:
    key: str
    name: str
    descriptions: tuple[str, ...]


@cache
def _clinical() -> tuple[int, dict[str, Finding]]:
    raw = yaml.safe_load(resources.files("cxrlt.resources").joinpath("descriptions.yaml").read_text())
    findings = {k: Finding(k, v["name"], tuple(v["descriptions"])) for k, v in raw["findings"].items()}
    return int(raw["version"]), findings


def load_bank(kind: str = "clinical") -> dict[str, Finding]:
    """Map every CXR-LT class to its :class:`Finding` in the chosen bank."""
    if kind == "clinical":
        return dict(_clinical()[1])
    if kind == "synthetic":
        from cxrlt.data.synth import FINDING_PATTERNS, NORMAL_REPORTS

        bank = {c: Finding(c, c.lower(), tuple(p.descriptions())) for c, p in FINDING_PATTERNS.items()}
        bank[NORMAL] = Finding(NORMAL, "no finding", NORMAL_REPORTS)
        return bank
    raise InvalidInputError(f"unknown description bank {kind!r}: choose one of {BANKS}")


def bank_version() -> int:
    return _clinical()[0]


def free_text_finding(text: str, bank: dict[str, Finding]) -> Finding:
    """A class given on the command line: a known class key (any case for unseen) or free text used as its name."""
    try:
        return bank[canonical_class(text)]
    except (ValueError, KeyError):
        return Finding(text, text, ())


def prompts_for(finding: Finding, mode: str) -> list[str]:
    if mode not in PROMPT_MODES:
        raise InvalidInputError(f"unknown prompt mode {mode!r}: choose one of {PROMPT_MODES}")
    names = [t.format(finding.name) for t in NAME_TEMPLATES]
    if mode == "names" or not finding.descriptions:
        return names
    descriptions = list(finding.descriptions)
    return descriptions if mode == "descriptions" else names + descriptions


def mentions(text: str, finding: Finding) -> bool:
    """Whether ``text`` names the finding (key or display name, whole words) or quotes one of its descriptions."""
    low = text.lower()
    for term in {finding.key.lower(), finding.name.lower()}:
        if re.search(rf"(?<![\w-]){re.escape(term)}(?![\w-])", low):
            return True
    return any(d.lower() in low for d in finding.descriptions)


__all__ = ["ALL_CLASSES", "BANKS", "Finding", "NEGATIVE_TEMPLATE", "PROMPT_MODES", "bank_version", "free_text_finding",
           "load_bank", "mentions", "prompts_for"]
