"""A model card for every registered version: what it is for, what it was trained on, how it performs overall and by
subgroup, how well calibrated it is, and the gate's evidence.

MLflow has no model card of its own, so the card is JSON in the shape of the Model Card Toolkit's schema
(``model_details``, ``model_parameters``, ``quantitative_analysis.performance_metrics[{type, value, slice}]``,
``considerations``), a rendered HTML page (the reliability diagrams embedded), and Markdown for the registered
version's description, where MLflow's UI shows it. The reporting items follow TRIPOD+AI and CLAIM: intended users and
use, training data and lineage, subgroup performance with CIs, calibration, limitations.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES

SCHEMA = "model_card_toolkit v0.0.2 (shape)"
INTENDED_USERS = ["radiologists and radiology AI teams in hospitals", "clinical AI governance boards"]
USE_CASES = [
    "Triage aid for adult PA, AP and lateral chest radiographs: ranks 30 known findings (long-tailed, multi-label) "
    "and 6 unseen findings (zero-shot) for a radiologist's worklist.",
]
OUT_OF_SCOPE = "Not an autonomous reader: every output is reviewed by a radiologist; not for paediatric images, CT, " \
               "or images other than chest radiographs (the server refuses non-radiograph DICOM)."
LIMITATIONS = [
    "Trained and evaluated on PadChest-derived data from one Spanish hospital (2009-2017); performance elsewhere, on "
    "other scanners or populations, is unknown until measured there.",
    "75 % of PadChest's labels were extracted from reports by a model (RNN), not read by a physician; rare findings "
    "have few positives, so their per-class scores carry wide intervals.",
    "The 6 unseen findings are scored zero-shot: compare their AP with the chance level reported below.",
    "Subgroups with fewer images than the gate's minimum are reported but not judged.",
    "Probabilities are calibrated on the development split; calibration drifts with the case mix.",
]
ETHICAL = [
    "Performance by sex, age band and projection is reported below; promotion refuses a version that is worse than "
    "the champion in any subgroup with enough images beyond the profile's margin.",
    "Images and DICOM headers are patient data: the server keeps no request logs and tensor tracing is an admin API.",
]


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


def _metric(kind: str, value, slice_: str = "overall", ci: Sequence | None = None) -> dict:
    entry = {"type": kind, "value": _num(value), "slice": slice_}
    if ci and _num(ci[0]) is not None and _num(ci[1]) is not None:
        entry["confidence_interval"] = {"lower_bound": _num(ci[0]), "upper_bound": _num(ci[1])}
    return entry


def build_card(name: str, version: str, metrics: Mapping, gate_evidence: Mapping, lineage: Mapping,
               subgroups: Sequence[Mapping] | None = None, graphics: Sequence[str] = ()) -> dict:
    """The card as a dict in the Model Card Toolkit's shape; ``metrics`` is the evaluation's summary (``mAP``,
    ``mAUROC``, ``mECE``, ``unseen_mAP`` ...), ``subgroups`` the rows of ``subgroups.json``, ``graphics`` the names of
    plots shipped with it."""
    performance = [_metric(k, metrics.get(k), "overall", (metrics.get("ci95") or {}).get(k))
                   for k in ("mAP", "mAUROC", "mF1", "mECE") if k in metrics]
    if "unseen_mAP" in metrics:
        performance.append(_metric("unseen_mAP", metrics.get("unseen_mAP"), "unseen findings (zero-shot)"))
        performance.append(_metric("unseen_chance_AP", metrics.get("unseen_prevalence"), "unseen findings (chance)"))
    for row in subgroups or []:
        where = f"{row['attribute']}={row['group']} (n={row['n_images']})"
        for kind in ("mAP", "mAUROC", "mECE"):
            performance.append(_metric(kind, row.get(kind), where, (row.get("ci95") or {}).get(kind)))
    return {
        "schema": SCHEMA,
        "model_details": {
            "name": name,
            "version": {"name": str(version)},
            "overview": "Chest radiograph classifier: a projection-aware ensemble for 30 known findings and a CXR CLIP "
                        "for 6 unseen findings, served by Triton behind one gRPC entry.",
            "licenses": [{"identifier": "Apache-2.0"}],
            "references": [{"reference": "CXR-LT 2026 challenge (PadChest)"}],
        },
        "model_parameters": {
            "model_architecture": "router -> per-projection ensemble (known findings) + zero-shot CLIP (unseen)",
            "input_format": "one chest radiograph (PNG, DICOM or pixels) per item",
            "output_format": f"probabilities for {len(KNOWN_CLASSES)} known and {len(UNSEEN_CLASSES)} unseen "
                             "findings, keyed by class name",
            "data": {"train": {"name": "CXR-LT 2026 training split",
                               "manifest_hash": lineage.get("data_manifest_hash")},
                     "eval": {"name": "development split", "n_images": metrics.get("n_images")}},
        },
        "lineage": dict(lineage),
        "quantitative_analysis": {"performance_metrics": performance, "graphics": list(graphics)},
        "operating_points": {"F1 threshold": 0.5, "note": "probabilities are calibrated; sites choose their own "
                                                         "worklist thresholds on local data"},
        "gate_evidence": dict(gate_evidence),
        "considerations": {"users": INTENDED_USERS, "use_cases": USE_CASES, "out_of_scope": OUT_OF_SCOPE,
                           "limitations": LIMITATIONS, "ethical_considerations": ETHICAL},
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _rows(card: Mapping) -> list[tuple[str, str, str, str]]:
    out = []
    for m in card["quantitative_analysis"]["performance_metrics"]:
        ci = m.get("confidence_interval")
        out.append((m["slice"], m["type"], _fmt(m["value"]),
                    f"{_fmt(ci['lower_bound'])} to {_fmt(ci['upper_bound'])}" if ci else ""))
    return out


def card_markdown(card: Mapping) -> str:
    """The card as Markdown (the registered version's description)."""
    details, considerations = card["model_details"], card["considerations"]
    gate = card["gate_evidence"]
    lines = [f"# {details['name']} version {details['version']['name']}", "", details["overview"], "",
             "## Intended use", *[f"- {u}" for u in considerations["use_cases"]], f"- {considerations['out_of_scope']}",
             "", "## Training data and lineage",
             *[f"- {k}: `{v}`" for k, v in card["lineage"].items()], "",
             "## Performance (development split)", "", "| slice | metric | value | 95 % CI |", "|---|---|---|---|",
             *[f"| {s} | {t} | {v} | {c} |" for s, t, v, c in _rows(card)], "",
             f"## Gate: {'passed' if gate.get('passed') else 'FAILED'}",
             *[f"- {c.get('metric')} {_fmt(_num(c.get('value')))} {c.get('op')} {c.get('threshold')}: "
               f"{'pass' if c.get('passed') else 'FAIL'}" for c in gate.get("checks", [])], "",
             "## Limitations", *[f"- {x}" for x in considerations["limitations"]], "",
             "## Ethical considerations", *[f"- {x}" for x in considerations["ethical_considerations"]]]
    return "\n".join(lines) + "\n"


def card_html(card: Mapping, images: Mapping[str, bytes] | None = None) -> str:
    """The card as one self-contained HTML page; ``images`` (name -> PNG bytes) are embedded."""
    e = html.escape
    details, considerations, gate = card["model_details"], card["considerations"], card["gate_evidence"]
    table = "".join(f"<tr><td>{e(s)}</td><td>{e(t)}</td><td>{e(v)}</td><td>{e(c)}</td></tr>"
                    for s, t, v, c in _rows(card))
    checks = "".join(f"<li>{e(str(c.get('metric')))} {e(_fmt(_num(c.get('value'))))} {e(str(c.get('op')))} "
                     f"{e(str(c.get('threshold')))}: {'pass' if c.get('passed') else '<b>FAIL</b>'}</li>"
                     for c in gate.get("checks", []))
    figures = "".join(f"<figure><img alt='{e(n)}' src='data:image/png;base64,{base64.b64encode(b).decode()}'>"
                      f"<figcaption>{e(n)}</figcaption></figure>" for n, b in (images or {}).items())

    def items(values: Sequence[str]) -> str:
        return "".join(f"<li>{e(v)}</li>" for v in values)

    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{e(details['name'])} v{e(details['version']['name'])} model card</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>"
        f"<h1>{e(details['name'])} version {e(details['version']['name'])}</h1><p>{e(details['overview'])}</p>"
        f"<h2>Intended use</h2><ul>{items(considerations['use_cases'])}<li>{e(considerations['out_of_scope'])}</li>"
        f"</ul><p>Users: {e(', '.join(considerations['users']))}</p>"
        "<h2>Training data and lineage</h2><ul>"
        + "".join(f"<li>{e(k)}: <code>{e(str(v))}</code></li>" for k, v in card["lineage"].items())
        + "</ul><h2>Performance (development split)</h2>"
        f"<table><tr><th>slice</th><th>metric</th><th>value</th><th>95 % CI</th></tr>{table}</table>{figures}"
        f"<h2>Gate: {'passed' if gate.get('passed') else 'FAILED'}</h2><ul>{checks}</ul>"
        f"<h2>Limitations</h2><ul>{items(considerations['limitations'])}</ul>"
        f"<h2>Ethical considerations</h2><ul>{items(considerations['ethical_considerations'])}</ul>"
        "</body></html>\n"
    )


def write_card(card: Mapping, out: Path, images: Mapping[str, bytes] | None = None) -> dict[str, Path]:
    """card.json, card.md and card.html in ``out``."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "card.json", "md": out / "card.md", "html": out / "card.html"}
    paths["json"].write_text(json.dumps(card, indent=2))
    paths["md"].write_text(card_markdown(card))
    paths["html"].write_text(card_html(card, images))
    return paths
