"""What the served entry counts, without a server: input kinds, declared bit depths and refusal reasons (the Triton
metrics themselves are scraped from the real server in tests/test_serving.py)."""

import cv2
import numpy as np
import pydicom
import pytest

from cxrlt.data.dicom import array_to_dicom
from serving.models._observe import bit_depth, input_kind, pixels_depth, refusal_reason, refusal_reasons
from serving.refusals import png_bytes, refusal_cases


def test_input_kind_and_bit_depth_from_the_headers(tmp_path):
    png8, png16 = png_bytes(dtype=np.uint8), png_bytes(dtype=np.uint16)
    assert (input_kind(png8), bit_depth(png8)) == ("png", "8")
    assert (input_kind(png16), bit_depth(png16)) == ("png", "16")
    path = array_to_dicom(np.full((16, 16), 900, np.uint16), tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(path)
    assert (input_kind(path.read_bytes()), bit_depth(path.read_bytes())) == ("dicom", "12")
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()
    assert (input_kind(jpeg), bit_depth(jpeg)) == ("other", "unknown")
    assert bit_depth(path.read_bytes()[:140]) == "unknown"  # a header cut short
    assert (pixels_depth(8), pixels_depth(16), pixels_depth(None), pixels_depth(0)) == ("8", "16", "float", "float")


@pytest.mark.parametrize(("case", "reason"), [
    ("empty bytes", "empty"), ("truncated png", "undecodable"), ("random bytes", "unknown_format"),
    ("CT slice", "not_a_radiograph"), ("MR image", "not_a_radiograph"), ("ultrasound palette", "not_grayscale"),
    ("multi-frame", "multi_frame"), ("colour PNG", "not_grayscale"), ("JPEG", "unknown_format"),
    ("dicom without pixels", "undecodable"), ("codestream larger than its tags", "too_many_pixels"),
    ("compressed DICOM without file meta", "undecodable"), ("decompression bomb", "too_many_pixels"),
    ("nan pixels", "non_finite"), ("inf pixels", "non_finite"), ("image over the byte limit", "too_large"),
    ("pixels over the byte limit", "too_large"), ("pixels deeper than BITS", "values_out_of_range"),
])
def test_every_refusal_of_the_catalogue_has_its_reason(case, reason):
    """The catalogue's fragment is what the refusal message must contain; the entry's reason label follows from it.
    (Wrong dtype or rank never reaches the entry: Triton refuses them first and counts them in nv_* metrics.)"""
    _, fragment = refusal_cases(1 << 20)[case]
    assert refusal_reason(f"item 0: {fragment} (details)") == reason


def test_a_message_for_several_items_gives_one_reason_each():
    message = ("item 0: Modality CT is not a projection radiograph (accepted: CR, DX); "
               "item 2: encoded image of 9 bytes is larger than this server's limit of 8 bytes (max_image_bytes)")
    assert refusal_reasons(message) == ["not_a_radiograph", "too_large"]
    assert refusal_reasons("scoring failed (router: no answer within 60 s (timeout))") == ["timeout"]
    assert refusal_reason("something new") == "other"
