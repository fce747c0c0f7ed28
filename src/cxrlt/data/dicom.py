"""Writing minimal DICOM files from arrays, so tests and demos can exercise the DICOM path without real scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlt.errors import InvalidInputError


def array_to_dicom(
    arr: np.ndarray,
    path: str | Path,
    *,
    monochrome1: bool = False,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    with_pixels: bool = True,
    patient_id: str = "SYNTH",
    study_uid: str | None = None,
) -> Path:
    """Save a uint16 2-D array as an uncompressed DX DICOM (Explicit VR Little Endian).

    ``monochrome1`` stores inverted pixels with PhotometricInterpretation MONOCHROME1 (as some CR/DX vendors do);
    reading it back must re-invert. ``with_pixels=False`` writes a file without PixelData (a real-world defect).
    The patient, study and series identify a synthetic patient (``study_uid`` puts several images in one study),
    so the file can be stored in a PACS and reported on like a modality's.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if arr.ndim != 2 or arr.dtype != np.uint16:
        raise InvalidInputError("array_to_dicom expects a 2-D uint16 array")
    path = Path(path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = patient_id
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = rescale_slope
    ds.RescaleIntercept = rescale_intercept
    if with_pixels:
        stored = (np.iinfo(np.uint16).max - arr) if monochrome1 else arr
        ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
