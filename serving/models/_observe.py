"""What the ``cxr`` entry counts for its Prometheus metrics (copied next to the entry's model.py as ``_observe.py``).

Pure functions of the request bytes and the refusal messages, so they are tested without a server. The entry turns
them into Triton custom metrics (``pb_utils.MetricFamily``) served on Triton's metrics port beside its ``nv_*``
metrics; infra/monitoring/ has the dashboard and the alert rules that read them.
"""

import io

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DICOM_MAGIC_OFFSET = 128
#: Upper bounds of the score histogram of every finding (Prometheus adds +Inf): fixed, so windows are comparable.
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: A refusal message -> a small, fixed set of reasons (the label of ``cxrlt_entry_refusals_total``), first match
#: wins, case-sensitive. The fragments are those of the refusal catalogue (serving/refusals.py), which the tests
#: hold the server's messages to; anything else is "other".
REFUSAL_REASONS = (
    ("max_image_bytes", "too_large"),
    ("over the limit", "too_many_pixels"),
    ("refused before decoding", "too_many_pixels"),
    ("not a projection radiograph", "not_a_radiograph"),
    ("not a grayscale", "not_grayscale"),
    ("colour type", "not_grayscale"),
    ("frames", "multi_frame"),
    ("NaN", "non_finite"),
    ("integers in", "values_out_of_range"),
    ("not a PNG or DICOM", "unknown_format"),
    ("empty", "empty"),
    ("truncated", "undecodable"),
    ("no pixel data", "undecodable"),
    ("without file meta", "undecodable"),
    ("timeout", "timeout"),
)


def input_kind(payload: bytes) -> str:
    """``png``, ``dicom`` or ``other`` from the first bytes of an encoded item."""
    if payload[:8] == PNG_SIGNATURE:
        return "png"
    if payload[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return "other"


def bit_depth(payload: bytes) -> str:
    """Bits per pixel as the file declares them (PNG IHDR bit depth, DICOM BitsStored), as a label value;
    ``unknown`` when the header cannot say."""
    kind = input_kind(payload)
    if kind == "png" and len(payload) >= 25:
        return str(payload[24])
    if kind == "dicom":
        try:
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True, specific_tags=["BitsStored"])
            return str(int(ds.BitsStored))
        except Exception:  # noqa: BLE001 - a damaged header: its refusal is counted on its own
            return "unknown"
    return "unknown"


def pixels_depth(bits: int | None) -> str:
    """The label of a raw PIXELS item: its declared BITS (8 or 16), or ``float`` for real values."""
    return str(int(bits)) if bits else "float"


def refusal_reason(message: str) -> str:
    for fragment, reason in REFUSAL_REASONS:
        if fragment in message:
            return reason
    return "other"


def refusal_reasons(message: str) -> list[str]:
    """One reason per refused item of a message that joins several (``item 0: ...; item 2: ...``)."""
    parts = [p for p in message.split("; ") if p.strip()]
    items = [p for p in parts if p.lstrip().startswith("item ")]
    return [refusal_reason(p) for p in (items or [message])]
