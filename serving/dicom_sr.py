"""Served findings as a DICOM Structured Report the PACS stores beside the image (IHE AI Results).

One Comprehensive 3D SR per scored image, rooted at TID 1500 (Measurement Report), written with highdicom:

- one image-level measurement group (TID 1501) per finding, keyed by class name: the finding type (SNOMED CT where
  the DICOM standard's code dictionary has the concept, otherwise the local scheme ``99CXRLT`` below), the served
  probability as a numeric value (UCUM ``1``), the operating threshold it was read at, and present/absent at that
  threshold; the method says whether the finding was trained (Task 1) or scored zero-shot (Task 2);
- the algorithm (name and registry version) in every group, and the model version in the Contributing Equipment
  Sequence with purpose (Newcode1, 99IHE, "Processing Algorithm") and a Device UID derived from the version, so a
  retrained model gets a new UID and the same version always the same one;
- the source image referenced in the evidence and in every group; ``VerificationFlag`` UNVERIFIED, ``CompletionFlag``
  PARTIAL: the report is a triage aid that no radiologist has signed.

The probabilities are the served output itself (``serving.client.Result``), never recomputed here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from cxrlt.errors import InvalidInputError

#: Private coding scheme of the findings that have no SNOMED CT code in the DICOM standard's dictionary, and of the
#: few concepts below (designators starting with 99 are private by DICOM PS3.16 convention).
LOCAL_SCHEME = "99CXRLT"
LOCAL_SCHEME_NAME = "cxrlt findings and report concepts (docs/hospital.md)"
MANUFACTURER = "cxrlt"
ALGORITHM_NAME = "cxrlt CXR-LT chest radiograph classifier"
SR_SERIES_NUMBER = 9700
#: The Contributing Equipment purpose that IHE AI Results (AIR) gives an AI algorithm: (value, meaning, scheme).
IHE_PROCESSING_ALGORITHM = ("Newcode1", "Processing Algorithm", "99IHE")
SR_SERIES_DESCRIPTION = "cxrlt AI findings (unverified)"

#: SNOMED CT concepts taken from pydicom's copy of the DICOM standard's code dictionary (by keyword, so a code
#: value is never typed by hand here).
SNOMED_KEYWORDS = {
    "Normal": "Normal",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "PleuralEffusion",
    "Nodule": "Nodule",
    "Mass": "Mass",
    "Pneumothorax": "Pneumothorax",
    "Adenopathy": "Lymphadenopathy",
}

#: Local codes (16 characters at most, the SH limit) for the PadChest findings without a dictionary SNOMED code.
LOCAL_CODES = {
    "aortic elongation": "AORTIC-ELONG",
    "atelectasis": "ATELECTASIS",
    "pleural thickening": "PLEURAL-THICK",
    "aortic atheromatosis": "AORTIC-ATHERO",
    "Support Devices": "SUPPORT-DEVICES",
    "alveolar pattern": "ALVEOLAR-PATTERN",
    "fracture": "FRACTURE",
    "Hernia": "HERNIA",
    "Emphysema": "EMPHYSEMA",
    "azygos lobe": "AZYGOS-LOBE",
    "Hydropneumothorax": "HYDROPNEUMOTHORX",
    "Kyphosis": "KYPHOSIS",
    "Subcutaneous Emphysema": "SUBCUT-EMPHYSEMA",
    "pneumoperitoneo": "PNEUMOPERITONEUM",
    "vascular hilar enlargement": "HILAR-VASC-ENLRG",
    "vertebral degenerative changes": "VERTEBRAL-DEGEN",
    "hyperinflated lung": "HYPERINFLATION",
    "interstitial pattern": "INTERSTITIAL-PAT",
    "central venous catheter": "CVC",
    "hypoexpansion": "HYPOEXPANSION",
    "bronchiectasis": "BRONCHIECTASIS",
    "hemidiaphragm elevation": "HEMIDIAPH-ELEV",
    "sternotomy": "STERNOTOMY",
    "calcified densities": "CALCIFIED-DENS",
    "Scoliosis": "SCOLIOSIS",
    "Osteopenia": "OSTEOPENIA",
    "Bulla": "BULLA",
    "Infarction": "PULM-INFARCTION",
    "goiter": "GOITER",
}

#: Namespace of the model versions' Device UIDs (uuid5 of the URL namespace and the project's name).
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/cxrlt/cxrlt/model-version")

#: The concepts of this report that no standard code names (local scheme).
LOCAL_CONCEPTS = {
    "threshold": ("OPERATING-THRESH", "Operating threshold"),
    "supervised": ("SUPERVISED", "Supervised classifier trained on this finding"),
    "zeroshot": ("ZERO-SHOT", "Zero-shot image-text scoring, never trained on this finding"),
}


def _code(value: str, meaning: str, scheme: str = LOCAL_SCHEME):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def finding_code(name: str):
    """The coded concept of a finding, by class name. A name outside both tables (a future label space) gets a
    local code derived from its digest, with the name itself as the meaning: never another finding's code."""
    from pydicom.sr.codedict import codes

    if name in SNOMED_KEYWORDS:
        return getattr(codes.SCT, SNOMED_KEYWORDS[name])
    value = LOCAL_CODES.get(name) or "X" + hashlib.sha256(name.encode()).hexdigest()[:15].upper()
    return _code(value, name)


def device_uid(model_version: str) -> str:
    """A UID for one registered model version: the same version always gets the same UID, another version another.
    A name-based (SHA-1) UUID of the version under the project's namespace, as a 2.25 UID (ISO/IEC 9834-8)."""
    if not model_version:
        raise InvalidInputError("a DICOM SR needs the served model version (the response carried none)")
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, model_version).int}"


@dataclass(frozen=True)
class Finding:
    """One served finding: its probability and whether it was trained (``known``) or scored zero-shot."""

    name: str
    probability: float
    zero_shot: bool


def findings_of(known: Mapping[str, float], unseen: Mapping[str, float]) -> list[Finding]:
    """Findings in the order the server listed them, known first; every probability must be a probability."""
    rows = [Finding(n, float(p), False) for n, p in known.items()]
    rows += [Finding(n, float(p), True) for n, p in unseen.items()]
    if not rows:
        raise InvalidInputError("no findings to report: the image was not scored")
    bad = [f.name for f in rows if not 0.0 <= f.probability <= 1.0]
    if bad:
        raise InvalidInputError(f"probabilities outside [0, 1] for {bad}: refusing to report them")
    return rows


def thresholds_for(findings: list[Finding], thresholds: Mapping[str, float] | None, default: float) -> dict[str, float]:
    """The operating threshold of every finding: a per-finding value where given, else ``default``. A threshold
    named for a finding the model does not serve is an error (a misspelt name would silently use the default)."""
    thresholds = dict(thresholds or {})
    names = {f.name for f in findings}
    unknown = sorted(set(thresholds) - names)
    if unknown:
        raise InvalidInputError(f"thresholds for findings the model does not serve: {unknown} (served: "
                                f"{sorted(names)})")
    out = {f.name: float(thresholds.get(f.name, default)) for f in findings}
    bad = {n: t for n, t in out.items() if not 0.0 <= t <= 1.0}
    if bad:
        raise InvalidInputError(f"operating thresholds must lie in [0, 1]: {bad}")
    return out


def build_sr(image, known: Mapping[str, float], unseen: Mapping[str, float], model_version: str, *,
             threshold: float = 0.5, thresholds: Mapping[str, float] | None = None,
             model_name: str = "cxrlt-bundle", institution_name: str | None = None):
    """The Comprehensive 3D SR (a pydicom Dataset) of one scored image.

    ``image``: the source image's dataset (pixel data not needed); ``known``/``unseen``: the served probabilities by
    class name; ``model_version``: the served version (e.g. ``cxrlt-bundle/7``); ``threshold``: the operating
    threshold of every finding unless ``thresholds`` names its own.
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if k not in image]
    if missing:
        raise InvalidInputError(f"the image has no {', '.join(missing)}: a report cannot reference it")
    findings = findings_of(known, unseen)
    cutoffs = thresholds_for(findings, thresholds, threshold)
    uid = device_uid(model_version)
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=model_version)
    source = hd.sr.SourceImageForMeasurementGroup.from_source_image(image)
    unit = codes.UCUM.NoUnits
    groups = []
    for f in findings:
        concept = finding_code(f.name)
        present = f.probability >= cutoffs[f.name]
        method = LOCAL_CONCEPTS["zeroshot" if f.zero_shot else "supervised"]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f.name),
            finding_type=concept,
            method=_code(*method),
            algorithm_id=algorithm,
            source_images=[source],
            measurements=[
                hd.sr.Measurement(name=codes.DCM.Probability, value=f.probability, unit=unit, algorithm_id=algorithm),
                hd.sr.Measurement(name=_code(*LOCAL_CONCEPTS["threshold"]), value=cutoffs[f.name], unit=unit),
            ],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=concept, value=codes.SCT.Present if present else codes.SCT.Absent)],
        ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid, name=ALGORITHM_NAME, manufacturer_name=MANUFACTURER, model_name=model_name))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ChestImaging,
        imaging_measurements=groups)
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_name, software_versions=model_version,
        contribution_description="AI findings for this image (unverified)")
    # IHE AI Results names the algorithm with its own purpose code, outside highdicom's list (DICOM CID 7005)
    equipment.PurposeOfReferenceCodeSequence = [_code(*IHE_PROCESSING_ALGORITHM)]
    equipment.DeviceUID = uid
    schemes = [CodingSchemeIdentificationItem(LOCAL_SCHEME, name=LOCAL_SCHEME_NAME, responsible_organization="cxrlt"),
               CodingSchemeIdentificationItem(IHE_PROCESSING_ALGORITHM[2], name="IHE codes",
                                                    responsible_organization="IHE")]
    sr = hd.sr.Comprehensive3DSR(
        evidence=[image], content=report[0], series_instance_uid=generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        institution_name=institution_name, is_complete=False, is_final=False, is_verified=False,
        contributing_equipment=[equipment], series_description=SR_SERIES_DESCRIPTION,
        coding_schemes=schemes)
    return sr


def read_sr(sr) -> dict:
    """What an SR written by :func:`build_sr` says, keyed by finding name: probability, threshold, present,
    zero_shot; and the referenced image, the model version and the device UID. For tests and ``cxrlt gateway``."""
    from pydicom.sr.codedict import codes

    probability = (codes.DCM.Probability.value, codes.DCM.Probability.scheme_designator)
    thresh = (LOCAL_CONCEPTS["threshold"][0], LOCAL_SCHEME)
    findings: dict[str, dict] = {}
    referenced = None
    for container in sr.ContentSequence:
        for group in getattr(container, "ContentSequence", []):
            if group.get("ValueType") != "CONTAINER":
                continue
            row: dict = {}
            for item in group.ContentSequence:
                name = item.ConceptNameCodeSequence[0]
                key = (name.CodeValue, name.CodingSchemeDesignator)
                if name.CodeMeaning == "Tracking Identifier":
                    row["name"] = item.TextValue
                elif item.ValueType == "NUM" and key in (probability, thresh):
                    value = float(item.MeasuredValueSequence[0].NumericValue)
                    row["probability" if key == probability else "threshold"] = value
                elif name.CodeMeaning == "Measurement Method":
                    row["zero_shot"] = item.ConceptCodeSequence[0].CodeValue == LOCAL_CONCEPTS["zeroshot"][0]
                elif item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodeValue in (
                        codes.SCT.Present.value, codes.SCT.Absent.value) and name.CodeMeaning != "Finding":
                    row["present"] = item.ConceptCodeSequence[0].CodeValue == codes.SCT.Present.value
                elif item.ValueType == "IMAGE":
                    referenced = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            if "name" in row:
                findings[row.pop("name")] = row
    equipment = sr.ContributingEquipmentSequence[0]
    return {"findings": findings, "image": referenced, "uid": str(sr.SOPInstanceUID),
            "model_version": str(equipment.SoftwareVersions),
            "device_uid": str(equipment.DeviceUID), "verification": str(sr.VerificationFlag)}
