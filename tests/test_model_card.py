"""The model card: its content from an evaluation's summary, subgroups and gate evidence, in the Model Card Toolkit's
shape, as Markdown and as one self-contained HTML page. A registered version's card is checked against a real MLflow
server in tests/test_registry_trust.py."""

from __future__ import annotations

import json

from cxrlt.model_card import build_card, card_html, card_markdown, write_card

METRICS = {"mAP": 0.4251, "mAUROC": 0.869, "mF1": 0.31, "mECE": 0.026, "unseen_mAP": 0.11, "unseen_prevalence": 0.04,
           "n_images": 375, "ci95": {"mAP": [0.39, 0.46]}}
EVIDENCE = {"passed": True, "checks": [{"metric": "mAUROC", "value": 0.869, "op": ">=", "threshold": 0.75,
                                        "passed": True}]}
LINEAGE = {"data_manifest_hash": "abc123", "git_commit": "deadbeef", "config_hash": "c0ffee"}
SUBGROUPS = [{"attribute": "sex", "group": "F", "n_images": 180, "mAP": 0.41, "mAUROC": 0.86, "mECE": 0.03,
              "ci95": {"mAP": [0.36, 0.47]}, "flags": []},
             {"attribute": "age_band", "group": "80+", "n_images": 12, "mAP": None, "mAUROC": None, "mECE": 0.05,
              "ci95": {}, "flags": ["small: 12 images (< 30), no CI"]}]


def test_card_has_the_model_card_toolkit_shape_and_every_slice():
    card = build_card("cxrlt-bundle", "7", METRICS, EVIDENCE, LINEAGE, SUBGROUPS, ["reliability.png"])
    assert set(card) >= {"model_details", "model_parameters", "quantitative_analysis", "considerations"}
    assert card["model_details"]["version"]["name"] == "7"
    perf = {(m["slice"], m["type"]): m for m in card["quantitative_analysis"]["performance_metrics"]}
    assert perf[("overall", "mAP")]["value"] == 0.4251
    assert perf[("overall", "mAP")]["confidence_interval"] == {"lower_bound": 0.39, "upper_bound": 0.46}
    assert "confidence_interval" not in perf[("overall", "mAUROC")]  # no CI given: none invented
    assert perf[("sex=F (n=180)", "mAP")]["confidence_interval"]["upper_bound"] == 0.47
    assert perf[("age_band=80+ (n=12)", "mAP")]["value"] is None  # small group: reported, not dropped
    assert perf[("unseen findings (chance)", "unseen_chance_AP")]["value"] == 0.04
    assert card["model_parameters"]["data"]["train"]["manifest_hash"] == "abc123"
    assert "not an autonomous reader" in card["considerations"]["out_of_scope"].lower()
    json.dumps(card)  # serialisable as it is


def test_markdown_and_html_say_the_same_and_embed_the_plots(tmp_path):
    card = build_card("cxrlt-bundle", "7", METRICS, EVIDENCE, LINEAGE, SUBGROUPS, ["reliability.png"])
    md = card_markdown(card)
    assert "# cxrlt-bundle version 7" in md and "| overall | mAP | 0.425 | 0.390 to 0.460 |" in md
    assert "| age_band=80+ (n=12) | mAP | n/a |  |" in md
    assert "- git_commit: `deadbeef`" in md and "## Gate: passed" in md and "- mAUROC 0.869 >= 0.75: pass" in md
    png = b"\x89PNG\r\n\x1a\nfake"
    page = card_html({**card, "model_details": {**card["model_details"], "name": "<script>x</script>"}},
                     {"reliability.png": png})
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page  # escaped
    assert "data:image/png;base64,iVBORw0KGgpmYWtl" in page  # base64 of the bytes above
    paths = write_card(card, tmp_path / "card", {"reliability.png": png})
    assert json.loads(paths["json"].read_text()) == card and paths["md"].read_text() == md
