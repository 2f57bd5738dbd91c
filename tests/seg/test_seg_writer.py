"""Masks -> DICOM SEG (app/dicom/seg.py): the instances written from real DX and CT images pass
dciodvfy without an error, read back with highdicom to the same mask, segment label and
algorithm, and reference their source image; masks that cannot be written are refused."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.dicom.seg import (
    ANATOMICAL_STRUCTURE,
    SEG_STORAGE,
    SegError,
    SegmentMask,
    build_segmentation,
    medgate_version,
    store_segmentation,
    to_bytes,
)
from models.base import Code
from tests.conftest import dciodvfy, shared_file

# highdicom warns about the real files' single-component patient names ("JANCT000")
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent")

CARDIOMEGALY = Code("SCT", "8186001", "Cardiomegaly")


def write(ds: pydicom.Dataset, path: Path) -> Path:
    path.write_bytes(to_bytes(ds))
    return path


def assert_valid(path: Path) -> None:
    errors = [line for line in dciodvfy(path) if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def rectangle(source: pydicom.Dataset, top: int, left: int, height: int, width: int
              ) -> np.ndarray:
    mask = np.zeros((int(source.Rows), int(source.Columns)), dtype=np.uint8)
    mask[top:top + height, left:left + width] = 1
    return mask


def source_refs(seg: pydicom.Dataset) -> set[str]:
    refs = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame.DerivationImageSequence:
            refs |= {s.ReferencedSOPInstanceUID for s in derivation.SourceImageSequence}
    return refs


@pytest.fixture(scope="module")
def dx() -> pydicom.Dataset:
    return pydicom.dcmread(shared_file("cxr/dx_image.dcm"))


@pytest.fixture(scope="module")
def ct() -> pydicom.Dataset:
    return pydicom.dcmread(shared_file("ct/ct-3slice/02.dcm"))


def test_dx_rectangle_is_valid_and_round_trips(tmp_path, dx):
    assert "FrameOfReferenceUID" not in dx  # a projection radiograph
    mask = rectangle(dx, 40, 60, 50, 80)
    seg = build_segmentation(dx, [SegmentMask("Enlarged cardiac silhouette", mask, CARDIOMEGALY)],
                             family="medsam", version="2.1")
    path = write(seg, tmp_path / "dx_seg.dcm")
    assert_valid(path)

    back = hd.seg.segread(path)
    assert back.SOPClassUID == SEG_STORAGE and back.Modality == "SEG"
    assert back.SegmentationType == "BINARY"
    assert back.StudyInstanceUID == dx.StudyInstanceUID and back.PatientID == dx.PatientID
    assert back.SeriesInstanceUID != dx.SeriesInstanceUID
    assert back.SOPInstanceUID != dx.SOPInstanceUID
    assert back.Manufacturer == "MedGate" and back.SoftwareVersions == medgate_version()
    assert back.PatientOrientation == dx.PatientOrientation
    pixels = back.get_pixels_by_source_instance([dx.SOPInstanceUID], segment_numbers=[1])
    assert pixels.shape == (1, dx.Rows, dx.Columns, 1)
    np.testing.assert_array_equal(pixels[0, :, :, 0], mask)
    desc = back.get_segment_description(1)
    assert desc.segment_label == "Enlarged cardiac silhouette"
    assert desc.segmented_property_type.value == "8186001"
    assert desc.segmented_property_type.scheme_designator == "SCT"
    assert desc.segmented_property_category.value == "49755003"  # morphologically abnormal
    assert desc.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = desc.algorithm_identification[0]
    assert algorithm.AlgorithmName == "medsam" and algorithm.AlgorithmVersion == "2.1"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # AI (CID 7162)
    assert source_refs(back) == {dx.SOPInstanceUID}
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == dx.SeriesInstanceUID


def test_ct_slice_two_overlapping_segments_round_trip(tmp_path, ct):
    assert "FrameOfReferenceUID" in ct
    liver = rectangle(ct, 200, 100, 120, 160)
    lesion = rectangle(ct, 240, 150, 30, 40)  # inside the first: BINARY segments may overlap
    seg = build_segmentation(
        ct, [SegmentMask("liver", liver, Code("SCT", "10200004", "Liver"), ANATOMICAL_STRUCTURE),
             SegmentMask("liver lesion", lesion)],
        family="ct-seg", version="0.3", series_number=301, series_description="Liver masks",
        algorithm_type="SEMIAUTOMATIC")
    path = write(seg, tmp_path / "ct_seg.dcm")
    assert_valid(path)

    back = hd.seg.segread(path)
    assert back.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert back.SeriesNumber == 301 and back.SeriesDescription == "Liver masks"
    pixels = back.get_pixels_by_source_instance([ct.SOPInstanceUID], segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels[0, :, :, 0], liver)
    np.testing.assert_array_equal(pixels[0, :, :, 1], lesion)
    first, second = back.get_segment_description(1), back.get_segment_description(2)
    assert first.segmented_property_category.value == "91723000"
    assert first.segmented_property_type.value == "10200004"
    # no code given: MedGate's private scheme, declared in the Coding Scheme Identification
    assert second.segment_label == "liver lesion"
    assert second.segmented_property_type.scheme_designator == "99MEDGATE"
    assert second.segmented_property_type.value == "liver-lesion"
    assert second.segmented_property_type.meaning == "liver lesion"
    assert second.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert back.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MEDGATE"
    assert source_refs(back) == {ct.SOPInstanceUID}


def test_long_and_non_ascii_labels(tmp_path, ct):
    label = "结节 " + "x" * 80
    seg = build_segmentation(ct, [SegmentMask(label, rectangle(ct, 10, 10, 5, 5))],
                             family="f", version="1")
    path = write(seg, tmp_path / "label.dcm")
    assert_valid(path)
    back = hd.seg.segread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    kept = back.get_segment_description(1).segment_label
    assert label.startswith(kept) and len(kept.encode("utf-8")) <= 64 and len(kept) == 60


@pytest.fixture(scope="module")
def enhanced_ct(tmp_path_factory) -> pydicom.Dataset:
    """The three real CT slices as one multi-frame Legacy Converted Enhanced CT image."""
    slices = [pydicom.dcmread(shared_file(f"ct/ct-3slice/0{i}.dcm")) for i in (1, 2, 3)]
    for ds in slices:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=hd.UID(), series_number=1, sop_instance_uid=hd.UID(),
        instance_number=1)
    path = tmp_path_factory.mktemp("enhanced") / "enhanced_ct.dcm"
    image.save_as(path)
    return pydicom.dcmread(path)


def test_one_frame_of_a_multi_frame_source(tmp_path, enhanced_ct):
    assert enhanced_ct.NumberOfFrames == 3
    mask = rectangle(enhanced_ct, 100, 120, 60, 90)
    seg = build_segmentation(enhanced_ct, [SegmentMask("nodule", mask)], family="f", version="1",
                             frame=2)
    path = write(seg, tmp_path / "mf_seg.dcm")
    assert_valid(path)
    back = hd.seg.segread(path)
    assert back.NumberOfFrames == 1  # the empty planes of frames 1 and 3 are left out
    ref = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0] \
        .SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == enhanced_ct.SOPInstanceUID
    assert int(ref.ReferencedFrameNumber) == 2
    pixels = back.get_pixels_by_source_frame(enhanced_ct.SOPInstanceUID,
                                             source_frame_numbers=[2])
    np.testing.assert_array_equal(pixels[0, :, :, 0], mask)

    with pytest.raises(SegError, match="say which one"):
        build_segmentation(enhanced_ct, [SegmentMask("nodule", mask)], family="f", version="1")
    with pytest.raises(SegError, match="outside the source's frames 1..3"):
        build_segmentation(enhanced_ct, [SegmentMask("nodule", mask)], family="f", version="1",
                           frame=4)


def test_one_tile_of_a_whole_slide_image(tmp_path):
    sm = pydicom.dcmread(shared_file("pathology/sm_image.dcm"))  # tiled, slide coordinates
    mask = rectangle(sm, 2, 3, 4, 5)
    seg = build_segmentation(sm, [SegmentMask("tumour", mask)], family="f", version="1",
                             frame=4)
    path = write(seg, tmp_path / "sm_seg.dcm")
    assert_valid(path)
    back = hd.seg.segread(path)
    ref = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0] \
        .SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == sm.SOPInstanceUID
    assert back.NumberOfFrames == 1 and int(ref.ReferencedFrameNumber) == 4
    pixels = back.get_pixels_by_source_frame(sm.SOPInstanceUID, source_frame_numbers=[4])
    np.testing.assert_array_equal(pixels[0, :, :, 0], mask)


def test_multi_frame_source_without_frame_of_reference_is_refused():
    us = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))  # 30-frame ultrasound
    assert int(us.NumberOfFrames) > 1 and "FrameOfReferenceUID" not in us
    with pytest.raises(SegError, match="without a Frame of Reference"):
        build_segmentation(us, [SegmentMask("x", rectangle(us, 10, 10, 20, 20))], family="f",
                           version="1", frame=3)


def test_wrong_shape_is_refused(dx):
    mask = np.ones((dx.Rows + 1, dx.Columns), dtype=np.uint8)
    with pytest.raises(SegError, match=rf"is {dx.Rows + 1}x{dx.Columns} but the source image "
                                       rf"is {dx.Rows}x{dx.Columns}"):
        build_segmentation(dx, [SegmentMask("x", mask)], family="f", version="1")


def test_non_binary_mask_is_refused(dx):
    mask = rectangle(dx, 10, 10, 20, 20)
    mask[15, 15] = 2
    with pytest.raises(SegError, match="not binary: it holds 0, 1, 2"):
        build_segmentation(dx, [SegmentMask("x", mask)], family="f", version="1")
    with pytest.raises(SegError, match="float64"):
        build_segmentation(dx, [SegmentMask("x", mask.astype(float))], family="f", version="1")


def test_empty_mask_is_refused(dx):
    empty = np.zeros((dx.Rows, dx.Columns), dtype=np.uint8)
    with pytest.raises(SegError, match="'nothing' is empty"):
        build_segmentation(dx, [SegmentMask("nothing", empty)], family="f", version="1")


def test_source_without_pixel_data_is_refused():
    header = pydicom.dcmread(shared_file("cxr/dx_image.dcm"), stop_before_pixels=True)
    with pytest.raises(SegError, match="no pixel data"):
        build_segmentation(header, [SegmentMask("x", rectangle(header, 1, 1, 2, 2))],
                           family="f", version="1")


def test_other_refusals(dx):
    mask = rectangle(dx, 10, 10, 20, 20)
    with pytest.raises(SegError, match="at least one mask"):
        build_segmentation(dx, [], family="f", version="1")
    with pytest.raises(SegError, match="family and version"):
        build_segmentation(dx, [SegmentMask("x", mask)], family="", version="1")
    with pytest.raises(SegError, match="single-frame source"):
        build_segmentation(dx, [SegmentMask("x", mask)], family="f", version="1", frame=2)
    with pytest.raises(SegError, match="needs a label"):
        build_segmentation(dx, [SegmentMask("  ", mask)], family="f", version="1")
    # a bool mask is a binary mask
    seg = build_segmentation(dx, [SegmentMask("x", mask.astype(bool))], family="f", version="1")
    assert seg.NumberOfFrames == 1


def test_stored_through_the_platform_store(medgate, ct):
    from app.db.session import session_factory
    from app.dicom import store

    factory = session_factory()
    source = store.store_path(factory, shared_file("ct/ct-3slice/02.dcm"), source="test")
    seg = build_segmentation(ct, [SegmentMask("lesion", rectangle(ct, 50, 50, 10, 10))],
                             family="f", version="1")
    stored = store_segmentation(factory, seg)
    assert stored.created and stored.sop_class_uid == SEG_STORAGE
    assert stored.study_uid == source.study_uid
    assert stored.series_uid == seg.SeriesInstanceUID != source.series_uid
    with factory() as session:
        from sqlalchemy import select

        from app.db.models import Series

        flags = dict(session.execute(select(Series.series_uid, Series.derived)).all())
    assert flags == {source.series_uid: False, stored.series_uid: True}
    back = hd.seg.segread(stored.path)
    assert source_refs(back) == {ct.SOPInstanceUID}
    # the same instance again: identical bytes, nothing changes
    again = store.store_path(factory, stored.path, source="test")
    assert not again.created
