"""The bundle contract: typed, versioned member cards, ensemble specs and bundles."""

import json

import pytest

from cxrlt.contract import FORMAT_VERSION, Bundle, EnsembleSpec, MemberCard
from cxrlt.errors import InvalidInputError, NotFoundError

CARD = {"member": "frontal/pcam", "kind": "pcam", "view": "frontal", "classes": ["Normal", "cardiomegaly"],
        "image_size": 32, "preprocess": {"size": 32, "channels": 1}, "model_config": {"backbone": "resnet18"}}


def test_member_card_round_trips_with_every_default_filled(tmp_path):
    MemberCard.model_validate(CARD).save(tmp_path)
    written = json.loads((tmp_path / "member.json").read_text())
    assert written["model_config"] == {"backbone": "resnet18"} and written["format_version"] == FORMAT_VERSION
    assert written["tta"] == "none" and written["in_chans"] == 1 and written["checkpoint_sha256"] is None
    card = MemberCard.load(tmp_path)
    assert card.model_config_ == {"backbone": "resnet18"} and card.view == "frontal"


def test_files_from_before_the_version_field_load_as_version_1(tmp_path):
    (tmp_path / "member.json").write_text(json.dumps(CARD))
    assert MemberCard.load(tmp_path).format_version == 1


def test_a_newer_format_is_refused_naming_both_versions(tmp_path):
    (tmp_path / "member.json").write_text(json.dumps({**CARD, "format_version": FORMAT_VERSION + 1}))
    newer = f"format {FORMAT_VERSION + 1}; this cxrlt reads up to {FORMAT_VERSION}"
    with pytest.raises(InvalidInputError, match=newer):
        MemberCard.load(tmp_path)


def test_a_misspelt_field_is_an_error_not_a_default(tmp_path):
    (tmp_path / "member.json").write_text(json.dumps({**CARD, "tta_mrege": "probability"}))
    with pytest.raises(InvalidInputError, match="tta_mrege"):
        MemberCard.load(tmp_path)


def test_missing_files_name_the_folder_and_the_command(tmp_path):
    with pytest.raises(NotFoundError, match="not an ensemble directory .no ensemble.json.; run cxrlt ensemble build"):
        EnsembleSpec.load(tmp_path)
    with pytest.raises(NotFoundError, match="not a served bundle .no bundle.json.; run cxrlt export"):
        Bundle.load(tmp_path)


def test_ensemble_weights_must_name_the_members():
    spec = {"classes": ["Normal"], "image_size": 32, "preprocess": {}, "views": {
        "frontal": {"members": {"pcam": "frontal/pcam", "swin": "frontal/swin"}, "weights": {"pcam": 1.0}}}}
    with pytest.raises(ValueError, match="do not name the members"):
        EnsembleSpec.model_validate(spec)


def test_bundles_written_with_the_old_format_key_load(tmp_path):
    bundle = {"format": 1, "cxrlt_version": "0.1.0", "known_classes": ["Normal"], "image_size": 32, "preprocess": {},
              "views": {"mixed": {"members": {"pcam": "mixed_pcam"}, "weights": {"pcam": 1.0}}}}
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    loaded = Bundle.load(tmp_path)
    assert loaded.format_version == 1 and loaded.combine == "logit" and loaded.views["mixed"].shared_trunk is None
