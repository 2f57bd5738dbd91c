"""Domain identification from DICOM metadata (the text fallback is tested with search)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from app.rag.domain import domain_from_metadata, identify_domain


@pytest.mark.parametrize(
    ("meta", "domain"),
    [
        ({"Modality": "CT"}, "ct"),
        ({"Modality": "DX", "BodyPartExamined": "CHEST"}, "cxr"),
        ({"Modality": "CR"}, "cxr"),
        ({"Modality": "DX", "BodyPartExamined": "KNEE"}, None),
        ({"Modality": "ECG"}, "ecg"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.9.1.1"}, "ecg"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.6", "Modality": "OT"}, "pathology"),
        ({"Modality": "SM"}, "pathology"),
        ({"Modality": "MR"}, None),
        ({}, None),
    ],
)
def test_metadata_names_the_domain(meta, domain):
    assert domain_from_metadata(meta) == domain


def test_a_pydicom_dataset_works_as_metadata():
    ds = Dataset()
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    assert domain_from_metadata(ds) == "ct"


def test_explicit_domain_wins_and_unknown_domain_is_refused():
    assert identify_domain("QTc", domain="cxr", metadata={"Modality": "ECG"}) == "cxr"
    assert identify_domain("QTc", metadata={"Modality": "ECG"}) == "ecg"
    assert identify_domain("QTc") is None  # no index given: no text fallback
    with pytest.raises(ValueError):
        identify_domain("x", domain="mri")
