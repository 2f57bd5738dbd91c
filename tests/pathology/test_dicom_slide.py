"""make_wsm: a region of the real CMU-1-Small-Region SVS as DICOM VL Whole Slide Microscopy
instances that dciodvfy accepts and wsidicom (through open_slide) reads back pixel for pixel."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import tiffslide
from pydicom.uid import generate_uid

from models.pathology.slide import open_slide
from models.pathology.tissue import tissue_pixels
from tests.conftest import dciodvfy, shared_file
from tests.pathology.dicom_slide import DEFAULT_BOX, SVS, WSM_SOP_CLASS, _halve, make_wsm


def _svs_box(x: int, y: int, w: int, h: int) -> np.ndarray:
    """The SVS pixels of a base-level box, read by tiffslide directly (not through open_slide)."""
    with tiffslide.TiffSlide(shared_file(SVS)) as ts:
        return np.asarray(ts.read_region((x, y), 0, (w, h)))[..., :3]


def _errors(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("Error")]


@pytest.fixture(scope="module")
def default_slide(tmp_path_factory):
    return make_wsm(shared_file(SVS), tmp_path_factory.mktemp("wsm"))


def test_default_box_is_mostly_tissue():
    px = tissue_pixels(_svs_box(*DEFAULT_BOX))
    assert DEFAULT_BOX[2:] == (1024, 1024)
    assert px.mean() > 0.75
    tiles = px.reshape(4, 256, 4, 256).mean((1, 3))
    assert tiles.min() > 0.2  # every 256-px tile holds tissue


def test_default_slide_passes_dciodvfy(default_slide):
    (path,) = default_slide
    lines = dciodvfy(path)
    assert not _errors(lines), "\n".join(lines)
    assert any("VLWholeSlideMicroscopyImage" in ln for ln in lines), lines


def test_default_slide_header(default_slide):
    ds = pydicom.dcmread(default_slide[0], stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == WSM_SOP_CLASS == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.Modality == "SM" and ds.PatientID == "SLIDE-1" and len(ds.StudyDate) == 8
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    assert ds.DimensionOrganizationType == "TILED_FULL"
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration) == (
        "RGB", 3, 0)
    assert (ds.Rows, ds.Columns, ds.NumberOfFrames) == (256, 256, 16)
    assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (1024, 1024)
    pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in pm.PixelSpacing] == pytest.approx([0.000499, 0.000499])
    assert float(pm.SliceThickness) > 0
    assert len(ds.TotalPixelMatrixOriginSequence) == 1
    assert [float(v) for v in ds.ImageOrientationSlide] == [0, -1, 0, -1, 0, 0]
    assert ds.ContainerIdentifier == "SLIDE-1_A_1_1"
    assert ds.SpecimenDescriptionSequence[0].SpecimenIdentifier == "SLIDE-1_A_1_1"
    # the template's UIDs are all replaced
    template = pydicom.dcmread(shared_file("pathology/sm_image.dcm"), stop_before_pixels=True)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "FrameOfReferenceUID"):
        assert ds[key].value != template[key].value, key
    assert (ds.SpecimenDescriptionSequence[0].SpecimenUID
            != template.SpecimenDescriptionSequence[0].SpecimenUID)


def test_default_slide_reads_back_the_svs_pixels(default_slide):
    ref = _svs_box(*DEFAULT_BOX)
    with open_slide(default_slide) as slide:
        assert slide.source == "dicom" and len(slide.levels) == 1
        lv = slide.levels[0]
        assert lv.size == (1024, 1024) and (lv.tile_width, lv.tile_height) == (256, 256)
        assert slide.mpp == pytest.approx((0.499, 0.499))
        assert np.array_equal(slide.read_region(0, 0, 0, 1024, 1024), ref)
        assert np.array_equal(slide.read_region(0, 300, 500, 200, 100),
                              ref[500:600, 300:500])
        ds = pydicom.dcmread(default_slide[0], stop_before_pixels=True)
        assert slide.dicom.study_instance_uid == ds.StudyInstanceUID
        assert slide.dicom.series_instance_uid == ds.SeriesInstanceUID
        assert slide.dicom.frame_of_reference_uid == ds.FrameOfReferenceUID
        assert slide.dicom.container_identifier == "SLIDE-1_A_1_1"


def test_pyramid_with_padded_edge_tiles(tmp_path):
    box = (600, 900, 1000, 700)  # not a multiple of the tile: edge tiles padded with white
    study, series = generate_uid(), generate_uid()
    paths = make_wsm(shared_file(SVS), tmp_path / "pyr", box=box, tile=256, levels=3,
                     patient_id="PAT-7", study_uid=study, series_uid=series,
                     study_date="20240102")
    assert [p.name for p in paths] == ["level-0.dcm", "level-1.dcm", "level-2.dcm"]
    headers = [pydicom.dcmread(p) for p in paths]
    for path in paths:
        lines = dciodvfy(path)
        assert not _errors(lines), f"{path.name}:\n" + "\n".join(lines)
    assert {d.StudyInstanceUID for d in headers} == {study}
    assert {d.SeriesInstanceUID for d in headers} == {series}
    assert len({d.FrameOfReferenceUID for d in headers}) == 1
    assert len({d.SOPInstanceUID for d in headers}) == 3
    assert {d.PatientID for d in headers} == {"PAT-7"}
    assert {d.StudyDate for d in headers} == {"20240102"}
    assert [list(d.ImageType)[3] for d in headers] == ["NONE", "RESAMPLED", "RESAMPLED"]
    assert [list(d.ImageType)[0] for d in headers] == ["ORIGINAL", "DERIVED", "DERIVED"]
    sizes = [(d.TotalPixelMatrixColumns, d.TotalPixelMatrixRows) for d in headers]
    assert sizes == [(1000, 700), (500, 350), (250, 175)]
    assert [int(d.NumberOfFrames) for d in headers] == [4 * 3, 2 * 2, 1]
    spacing = [float(d.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
                     .PixelSpacing[0]) for d in headers]
    assert spacing == pytest.approx([0.000499, 0.000998, 0.001996])
    # the last tile of level 0 (row 2, column 3) holds pixels 768..999 x 512..699: white beyond
    last = headers[0].pixel_array[-1]
    assert last.shape == (256, 256, 3)
    assert (last[700 - 512:] == 255).all() and (last[:, 1000 - 768:] == 255).all()

    ref = _svs_box(*box)
    with open_slide(paths) as slide:
        assert [lv.size for lv in slide.levels] == sizes
        assert [lv.downsample for lv in slide.levels] == [1.0, 2.0, 4.0]
        assert slide.levels[1].mpp == pytest.approx((0.998, 0.998))
        assert np.array_equal(slide.read_region(0, 0, 0, 1000, 700), ref)
        assert np.array_equal(slide.read_region(1, 0, 0, 500, 350), _halve(ref))
        assert np.array_equal(slide.read_region(2, 0, 0, 250, 175), _halve(_halve(ref)))
        assert slide.dicom.study_instance_uid == study
        assert len(slide.dicom.sop_instance_uids) == 3


def test_new_study_each_call_unless_given(tmp_path):
    box = (768, 1280, 256, 256)
    a = pydicom.dcmread(make_wsm(shared_file(SVS), tmp_path / "a", box=box)[0])
    b = pydicom.dcmread(make_wsm(shared_file(SVS), tmp_path / "b", box=box)[0])
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.FrameOfReferenceUID != b.FrameOfReferenceUID


def test_bad_arguments(tmp_path):
    svs = shared_file(SVS)
    with pytest.raises(ValueError, match="not inside"):
        make_wsm(svs, tmp_path, box=(2000, 0, 1024, 1024))
    with pytest.raises(ValueError, match="levels"):
        make_wsm(svs, tmp_path, levels=0)
    with pytest.raises(ValueError, match="tile"):
        make_wsm(svs, tmp_path, tile=0)
