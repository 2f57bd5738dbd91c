"""CT series to volume: sorting, geometry, HU, Enhanced CT, and the refusals (real DICOM files
written by tests/ct/phantoms.py, plus the shared dcmqi and dicom-numpy CT data)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage, generate_uid

from models.ct.volume import (
    REASONS,
    Volume,
    VolumeError,
    assemble,
    assemble_all,
)
from tests.conftest import dciodvfy, shared_file
from tests.ct import phantoms
from tests.ct.phantoms import (
    cylinder,
    cylinder_fraction,
    fraction_volume_ml,
    known_volume_ml,
    quantise,
    sphere,
    sphere_fraction,
    synthetic_chest,
    write_series,
)

SHAPE = (12, 64, 64)


def _chest(nz: int = SHAPE[0], seed: int = 0) -> np.ndarray:
    hu, _ = synthetic_chest((max(nz, 8), 64, 64), (2.5, 0.75, 0.75), 0.15, seed)
    return hu[:nz]


def _shuffled(paths: list[Path], seed: int = 1) -> list[Path]:
    out = list(paths)
    random.Random(seed).shuffle(out)
    assert out != paths
    return out


def _uids(paths: list[Path]) -> tuple[str, ...]:
    return tuple(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths)


def _refused(paths, reason: str, **kw) -> VolumeError:
    with pytest.raises(VolumeError) as info:
        assemble(paths, **kw)
    assert info.value.reason == reason, str(info.value)
    assert info.value.reason in REASONS
    return info.value


def _edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def _voxel_position(vol: Volume, k: int, i: int, j: int) -> np.ndarray:
    dz, dy, dx = vol.spacing
    return np.asarray(vol.origin) + vol.direction @ np.array([j * dx, i * dy, k * dz])


# --------------------------------------------------------------------------- assembly


@pytest.mark.parametrize("slope", [1.0, 0.5])
@pytest.mark.parametrize("thickness", [1.25, 2.5, 5.0])
def test_shuffled_slices_assemble_in_order(tmp_path: Path, thickness: float, slope: float):
    hu = _chest()
    if slope == 0.5:
        hu = hu + 0.5 * (np.arange(hu.size).reshape(hu.shape) % 2)  # half-HU steps survive
    spacing = (thickness, 0.75, 0.7)
    paths = write_series(tmp_path, hu, spacing, origin=(-20.0, -30.5, -100.25), slope=slope)
    vol = assemble(_shuffled(paths))
    assert vol.shape == hu.shape
    assert vol.spacing == pytest.approx(spacing, abs=1e-9)
    assert vol.origin == pytest.approx((-20.0, -30.5, -100.25), abs=1e-9)
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-12)
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu, quantise(hu, slope, -1024.0))
    if slope == 1.0:
        np.testing.assert_array_equal(vol.hu, hu)
    assert vol.slice_uids == _uids(paths)
    assert vol.frames == ()
    assert vol.slice_thickness == pytest.approx(thickness)
    assert vol.series_uid == str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert vol.frame_of_reference_uid == str(pydicom.dcmread(paths[0]).FrameOfReferenceUID)
    assert vol.voxel_ml == pytest.approx(thickness * 0.75 * 0.7 / 1000)
    assert vol.notes == []


def test_signed_stored_values_and_per_slice_rescale(tmp_path: Path):
    hu = _chest(6)
    hu[:, 0, 0] = -3024.0  # outside the reconstruction circle: stored < 0 with intercept 0
    paths = write_series(tmp_path, hu, (2.5, 0.75, 0.75), intercept=0.0)
    assert pydicom.dcmread(paths[0]).PixelRepresentation == 1
    # slice 2 re-encoded with its own slope and intercept: HU must come out the same
    ds = pydicom.dcmread(paths[2])
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-3072"
    ds.PixelRepresentation = 0
    ds.PixelData = np.rint((hu[2] + 3072) * 2).astype(np.uint16).tobytes()
    ds.save_as(paths[2], enforce_file_format=True)
    vol = assemble(_shuffled(paths))
    np.testing.assert_array_equal(vol.hu, hu)
    assert any("Rescale" in n for n in vol.notes)


def test_oblique_orientation(tmp_path: Path):
    a, b = math.radians(20), math.radians(35)
    row = np.array([math.cos(a), math.sin(a), 0.0])
    col = np.array([-math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), math.sin(b)])
    hu = _chest(10)
    origin = (12.5, -40.0, 33.0)
    paths = write_series(tmp_path, hu, (1.25, 0.8, 0.7), origin=origin,
                         orientation=(*row, *col))
    vol = assemble(_shuffled(paths))
    normal = np.cross(row, col)
    np.testing.assert_allclose(vol.direction, np.stack([row, col, normal], axis=1), atol=1e-6)
    assert np.linalg.det(vol.direction) == pytest.approx(1.0, abs=1e-6)
    assert vol.spacing == pytest.approx((1.25, 0.8, 0.7), abs=1e-5)
    assert vol.origin == pytest.approx(origin, abs=1e-6)
    assert vol.slice_uids == _uids(paths)
    np.testing.assert_array_equal(vol.hu, hu)
    # voxel (k, i, j) maps to slice k's Image Position plus i rows and j columns
    for k in (0, 4, 9):
        ipp = np.array([float(v) for v in pydicom.dcmread(paths[k]).ImagePositionPatient])
        np.testing.assert_allclose(_voxel_position(vol, k, 0, 0), ipp, atol=1e-4)
        np.testing.assert_allclose(_voxel_position(vol, k, 3, 5),
                                   ipp + 3 * 0.8 * col + 5 * 0.7 * row, atol=1e-4)


def test_slices_sort_along_the_normal_not_by_z(tmp_path: Path):
    """A coronal series (normal +y): order follows dot(normal, position)."""
    hu = _chest(8)
    paths = write_series(tmp_path, hu, (2.5, 0.75, 0.75), orientation=(1, 0, 0, 0, 0, -1),
                         origin=(0.0, -50.0, 0.0))
    vol = assemble(_shuffled(paths))
    np.testing.assert_allclose(vol.direction[:, 2], (0, 1, 0), atol=1e-12)
    assert vol.slice_uids == _uids(paths)
    np.testing.assert_array_equal(vol.hu, hu)


@pytest.mark.parametrize("per_frame", [False, True], ids=["shared-groups", "per-frame-groups"])
@pytest.mark.parametrize("slope", [1.0, 0.5])
def test_enhanced_ct_matches_classic_series(tmp_path: Path, per_frame: bool, slope: float):
    hu = _chest(10)
    kw = dict(origin=(-24.0, -24.0, -60.0), slope=slope, study_uid=generate_uid())
    classic = assemble(_shuffled(write_series(tmp_path / "classic", hu, (2.5, 0.75, 0.75),
                                              **kw)))
    [path] = write_series(tmp_path / "enhanced", hu, (2.5, 0.75, 0.75), enhanced=True,
                          per_frame=per_frame, **kw)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.EnhancedCTImageStorage and ds.NumberOfFrames == 10
    assert ("PlaneOrientationSequence" in ds.SharedFunctionalGroupsSequence[0]) != per_frame
    enhanced = assemble([path])
    np.testing.assert_array_equal(enhanced.hu, classic.hu)
    assert enhanced.spacing == pytest.approx(classic.spacing)
    assert enhanced.origin == pytest.approx(classic.origin)
    np.testing.assert_allclose(enhanced.direction, classic.direction)
    assert enhanced.slice_uids == (str(ds.SOPInstanceUID),) * 10
    assert enhanced.frames == tuple(range(1, 11))
    assert enhanced.slice_thickness == pytest.approx(2.5)


def test_enhanced_ct_frames_out_of_order(tmp_path: Path):
    """Frames stored in a shuffled order come back sorted, with their frame numbers."""
    hu = _chest(8)
    [path] = write_series(tmp_path, hu, (2.5, 0.75, 0.75), enhanced=True)
    ds = pydicom.dcmread(path)
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    frames = ds.pixel_array[order]
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(
        [ds.PerFrameFunctionalGroupsSequence[i] for i in order])
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    vol = assemble([path])
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.frames == tuple(order.index(k) + 1 for k in range(8))


def test_single_slice_volume(tmp_path: Path):
    hu = _chest(1)
    [path] = write_series(tmp_path, hu, (5.0, 0.75, 0.75))
    vol = assemble([path])
    assert vol.shape == (1, 64, 64) and vol.spacing[0] == pytest.approx(5.0)
    assert any("single slice" in n for n in vol.notes)
    _edit(path, SpacingBetweenSlices=None, SliceThickness="1.25")
    assert assemble([path]).spacing[0] == pytest.approx(1.25)
    _edit(path, SliceThickness=None)
    _refused([path], "no-geometry")


def test_path_and_uid_pairs_and_series_choice(tmp_path: Path):
    hu = _chest(6)
    study = generate_uid()
    a = write_series(tmp_path, hu, (2.5, 0.75, 0.75), study_uid=study, series_uid=generate_uid())
    b = write_series(tmp_path, hu[:4], (5.0, 0.75, 0.75), study_uid=study,
                     series_uid=generate_uid())
    pairs = [(p, u) for p, u in zip(a, _uids(a), strict=True)]
    vol = assemble(list(reversed(pairs)))
    assert vol.slice_uids == _uids(a)
    _refused(a + b, "several-series")
    series_b = str(pydicom.dcmread(b[0]).SeriesInstanceUID)
    vol_b = assemble(a + b, series_uid=series_b)
    assert vol_b.shape == (4, 64, 64) and vol_b.series_uid == series_b
    assert vol_b.spacing[0] == pytest.approx(5.0)
    assert any("other series" in n for n in vol_b.notes)


def test_header_checks_come_before_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A refusal is decided from headers alone: no pixel data is decoded."""
    import pydicom.pixels

    def boom(*a, **kw):
        raise AssertionError("pixel data read before the headers were checked")

    paths = write_series(tmp_path, _chest(8), (2.5, 0.75, 0.75), drop=(4,))
    monkeypatch.setattr(pydicom.pixels, "pixel_array", boom)
    monkeypatch.setattr(pydicom.pixels, "iter_pixels", boom)
    _refused(paths, "gap")


# --------------------------------------------------------------------------- shared real data


def test_real_three_slice_ct():
    files = [shared_file(f"ct/ct-3slice/0{i}.dcm") for i in (1, 2, 3)]
    vol = assemble(_shuffled(files, seed=3))
    assert vol.shape == (3, 512, 512)
    assert vol.spacing[0] > 0 and vol.spacing[0] == pytest.approx(1.0, abs=1e-4)
    assert vol.spacing[1:] == pytest.approx((0.810547, 0.810547))
    headers = [pydicom.dcmread(f) for f in files]
    along = [float(h.ImagePositionPatient[2]) for h in headers]  # axial: normal is +z
    order = np.argsort(along)
    assert list(order) == [2, 1, 0]  # 03.dcm is the lowest z, then 02, then 01
    assert vol.slice_uids == tuple(str(headers[i].SOPInstanceUID) for i in order)
    assert vol.origin == pytest.approx([float(v) for v in headers[2].ImagePositionPatient])
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-6)
    for k, i in enumerate(order):
        h = headers[i]
        expect = h.pixel_array.astype(np.float64) * float(h.RescaleSlope) + float(
            h.RescaleIntercept)
        np.testing.assert_array_equal(vol.hu[k], expect.astype(np.float32))
    assert vol.slice_thickness == pytest.approx(1.25)


def test_real_three_slice_ct_beside_its_segmentation():
    folder = shared_file("ct/ct-3slice")
    volumes, errors = assemble_all(sorted(folder.glob("*.dcm")))
    assert [v.shape for v in volumes] == [(3, 512, 512)]
    assert [e.reason for e in errors] == ["not-ct"]
    assert "liver_seg.dcm" in str(errors[0]) and "SEG" in str(errors[0])


def test_real_ct_as_legacy_converted_enhanced_ct(tmp_path: Path):
    """The same three slices converted by highdicom into one Legacy Converted Enhanced CT
    (a third-party multi-frame writer) assemble to the same volume."""
    import warnings

    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    files = [shared_file(f"ct/ct-3slice/0{i}.dcm") for i in (1, 2, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the data's single-component names
        image = LegacyConvertedEnhancedCTImage(
            legacy_datasets=[pydicom.dcmread(f) for f in files],
            series_instance_uid=generate_uid(), series_number=99,
            sop_instance_uid=generate_uid(), instance_number=1)
    path = tmp_path / "lce.dcm"
    image.save_as(path)
    classic, multi = assemble(files), assemble([path])
    np.testing.assert_array_equal(multi.hu, classic.hu)
    assert multi.spacing == pytest.approx(classic.spacing)
    assert multi.origin == pytest.approx(classic.origin)
    assert multi.slice_uids == (str(image.SOPInstanceUID),) * 3
    assert sorted(multi.frames) == [1, 2, 3]


def test_volume_error_pickles():
    import pickle

    err = VolumeError("gap", "a gap", paths=[Path("a.dcm")], series_uid="1.2")
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, str(back), back.paths, back.series_uid) == (
        "gap", "a gap", (Path("a.dcm"),), "1.2")


def test_real_duplicate_slices_refused():
    """dicom-numpy's negative test: 11 non-contiguous slices, CT26 and CT28 at one position."""
    folder = shared_file("ct/duplicate-slices")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 11
    err = _refused(files, "duplicate-position")
    assert "CT26.dcm" in str(err) and "CT28.dcm" in str(err)
    assert "unevenly spaced" in str(err)
    assert {p.name for p in err.paths} == {"CT26.dcm", "CT28.dcm"}
    # without the duplicate the same files are still not one volume: non-contiguous
    err = _refused([f for f in files if f.name != "CT28.dcm"], "gap")
    volumes, errors = assemble_all(files)
    assert volumes == [] and [e.reason for e in errors] == ["duplicate-position"]


# --------------------------------------------------------------------------- refusals


def test_gantry_tilt_refused_with_angle(tmp_path: Path):
    paths = write_series(tmp_path, _chest(10), (2.5, 0.75, 0.75), tilt_deg=15.0)
    err = _refused(_shuffled(paths), "gantry-tilt")
    assert "15.00 deg" in str(err)
    assert "Gantry/Detector Tilt 15 deg" in str(err)


def test_small_tilt_from_positions_alone(tmp_path: Path):
    paths = write_series(tmp_path, _chest(20), (1.25, 0.75, 0.75), tilt_deg=2.0)
    for p in paths:
        _edit(p, GantryDetectorTilt="0")
    err = _refused(paths, "gantry-tilt")
    assert "2.00 deg" in str(err)


def test_header_tilt_with_stacked_positions_refused(tmp_path: Path):
    paths = write_series(tmp_path, _chest(6), (2.5, 0.75, 0.75))
    for p in paths:
        _edit(p, GantryDetectorTilt="-12.5")
    assert "-12.50 deg" in str(_refused(paths, "gantry-tilt"))


def test_enhanced_tilt_refused(tmp_path: Path):
    [path] = write_series(tmp_path, _chest(8), (2.5, 0.75, 0.75), tilt_deg=10.0, enhanced=True)
    assert "10.00 deg" in str(_refused([path], "gantry-tilt"))


def test_gap_refused(tmp_path: Path):
    paths = write_series(tmp_path, _chest(12), (2.5, 0.75, 0.75), origin=(0, 0, 0),
                         drop=(5, 6))
    err = _refused(_shuffled(paths), "gap")
    assert "between 10 and 17.5 mm" in str(err) and "about 2 slice(s) missing" in str(err)
    assert len(err.paths) == 10


def test_varying_spacing_refused(tmp_path: Path):
    paths = write_series(tmp_path, _chest(10), (2.5, 0.75, 0.75), origin=(0, 0, 0))
    _edit(paths[4], ImagePositionPatient=["0", "0", "10.4"])
    assert _refused(paths, "varying-spacing").reason == "varying-spacing"
    # within tolerance (0.02 mm, 1 % of 2.5 mm = 0.025 mm): accepted
    _edit(paths[4], ImagePositionPatient=["0", "0", "10.01"])
    assert assemble(paths).spacing[0] == pytest.approx(2.5)


def test_duplicate_position_refused(tmp_path: Path):
    paths = write_series(tmp_path, _chest(8), (2.5, 0.75, 0.75), duplicate=(3,))
    assert len(paths) == 9
    err = _refused(_shuffled(paths), "duplicate-position")
    assert {p.name for p in err.paths} == {paths[3].name, paths[4].name}


def test_same_instance_twice_is_used_once(tmp_path: Path):
    paths = write_series(tmp_path, _chest(6), (2.5, 0.75, 0.75))
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(paths[2].read_bytes())
    vol = assemble(paths + [copy])
    assert vol.shape[0] == 6 and any("used once" in n for n in vol.notes)


def test_mixed_orientation_refused_and_split(tmp_path: Path):
    hu = _chest(12)
    series, study = generate_uid(), generate_uid()
    axial = write_series(tmp_path, hu, (2.5, 0.75, 0.75), study_uid=study, series_uid=series)
    # a sagittal reformat in the same series: slices along x, rows along -z, columns along y
    sag = np.ascontiguousarray(np.transpose(hu, (2, 0, 1))[:, ::-1, :])
    sagittal = write_series(tmp_path, sag, (0.75, 2.5, 0.75), study_uid=study,
                            series_uid=series, orientation=(0, 1, 0, 0, 0, -1))
    err = _refused(_shuffled(axial + sagittal), "mixed-orientation")
    assert "2 orientations" in str(err)
    volumes, errors = assemble_all(_shuffled(axial + sagittal))
    assert errors == []
    assert sorted(v.shape for v in volumes) == sorted([(12, 64, 64), (64, 12, 64)])
    ax = next(v for v in volumes if v.shape == (12, 64, 64))
    np.testing.assert_array_equal(ax.hu, hu)
    sg = next(v for v in volumes if v.shape == (64, 12, 64))
    np.testing.assert_allclose(sg.direction[:, 2], (-1, 0, 0), atol=1e-12)
    assert sg.spacing == pytest.approx((0.75, 2.5, 0.75))


def test_two_acquisitions_refused_and_split(tmp_path: Path):
    first, second = _chest(10, seed=1), _chest(10, seed=2)
    series, study = generate_uid(), generate_uid()
    a = write_series(tmp_path, first, (2.5, 0.75, 0.75), study_uid=study, series_uid=series,
                     acquisition=1)
    b = write_series(tmp_path, second, (2.5, 0.75, 0.75), study_uid=study, series_uid=series,
                     acquisition=2)
    err = _refused(_shuffled(a + b), "several-acquisitions")
    assert "Acquisition Number" in str(err) and "assemble_all" in str(err)
    volumes, errors = assemble_all(_shuffled(a + b))
    assert errors == [] and len(volumes) == 2
    by_uid = {v.slice_uids: v for v in volumes}
    np.testing.assert_array_equal(by_uid[_uids(a)].hu, first)
    np.testing.assert_array_equal(by_uid[_uids(b)].hu, second)


def test_adjacent_acquisitions_join(tmp_path: Path):
    """Step-and-shoot: acquisitions of adjacent, non-overlapping ranges are one volume."""
    hu = _chest(12)
    series, study = generate_uid(), generate_uid()
    a = write_series(tmp_path, hu[:6], (2.5, 0.75, 0.75), origin=(0, 0, 0), study_uid=study,
                     series_uid=series, acquisition=1)
    b = write_series(tmp_path, hu[6:], (2.5, 0.75, 0.75), origin=(0, 0, 15.0),
                     study_uid=study, series_uid=series, acquisition=2)
    vol = assemble(_shuffled(a + b))
    np.testing.assert_array_equal(vol.hu, hu)
    assert any("acquisitions" in n for n in vol.notes)
    volumes, errors = assemble_all(a + b)
    assert len(volumes) == 1 and errors == []


def test_temporal_positions_refused_and_split(tmp_path: Path):
    series, study = generate_uid(), generate_uid()
    paths = []
    for t in (1, 2, 3):
        paths += write_series(tmp_path, _chest(6, seed=t), (5.0, 0.75, 0.75), study_uid=study,
                              series_uid=series, temporal_position=t)
    err = _refused(paths, "several-acquisitions")
    assert "temporal" in str(err).lower()
    volumes, errors = assemble_all(_shuffled(paths))
    assert len(volumes) == 3 and errors == []


def test_mixed_size_refused(tmp_path: Path):
    paths = write_series(tmp_path, _chest(6), (2.5, 0.75, 0.75))
    _edit(paths[3], PixelSpacing=["0.8", "0.8"])
    assert "Pixel Spacing" in str(_refused(paths, "mixed-size"))
    other = write_series(tmp_path / "small", _chest(6)[:, :32, :32], (2.5, 0.75, 0.75))
    _edit(paths[3], PixelSpacing=["0.75", "0.75"])
    _edit(other[0], SeriesInstanceUID=str(pydicom.dcmread(paths[0]).SeriesInstanceUID),
          FrameOfReferenceUID=str(pydicom.dcmread(paths[0]).FrameOfReferenceUID),
          ImagePositionPatient=["-24", "-24", "-35"])
    assert "64x64" in str(_refused(paths + other[:1], "mixed-size"))


def test_not_ct_unreadable_localizer_and_rescale(tmp_path: Path):
    paths = write_series(tmp_path, _chest(6), (2.5, 0.75, 0.75))
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    assert "notes.txt" in str(_refused(paths + [junk], "unreadable"))
    mr = tmp_path / "mr.dcm"
    ds = pydicom.dcmread(paths[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.save_as(mr, enforce_file_format=True)
    assert "MR" in str(_refused(paths[1:] + [mr], "not-ct"))
    _edit(paths[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    _refused(paths, "localizer")
    volumes, errors = assemble_all(paths + [junk, mr])
    assert [v.shape[0] for v in volumes] == [5]
    assert sorted(e.reason for e in errors) == ["localizer", "not-ct", "unreadable"]
    _edit(paths[0], ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    _edit(paths[1], RescaleSlope=None)
    _refused(paths, "no-rescale")
    _edit(paths[1], RescaleSlope="1", RescaleType="US")
    _refused(paths, "not-hu")
    _edit(paths[1], RescaleType="HU", ImageOrientationPatient=None)
    _refused(paths, "no-geometry")
    _refused([], "too-few-slices")


def test_several_frames_of_reference_refused(tmp_path: Path):
    hu = _chest(8)
    series = generate_uid()
    a = write_series(tmp_path, hu[:4], (2.5, 0.75, 0.75), origin=(0, 0, 0), series_uid=series,
                     frame_uid=generate_uid())
    b = write_series(tmp_path, hu[4:], (2.5, 0.75, 0.75), origin=(0, 0, 10), series_uid=series,
                     frame_uid=generate_uid())
    _refused(a + b, "several-frames-of-reference")
    volumes, errors = assemble_all(a + b)
    assert len(volumes) == 2 and errors == []


# --------------------------------------------------------------------------- the phantoms


def test_phantom_files_are_valid_dicom(tmp_path: Path):
    hu = _chest(3)
    [classic] = write_series(tmp_path / "c", hu[:1], (2.5, 0.75, 0.75), patient_id="PH-7",
                             series_description="Chest", body_part="CHEST")
    [enhanced] = write_series(tmp_path / "e", hu, (2.5, 0.75, 0.75), enhanced=True,
                              body_part="CHEST")
    ds = pydicom.dcmread(classic)
    assert ds.PatientID == "PH-7" and ds.Modality == "CT" and ds.BitsAllocated == 16
    assert ds.BodyPartExamined == "CHEST" and ds.SeriesDescription == "Chest"
    for path in (classic, enhanced):
        errors = [line for line in dciodvfy(path) if line.startswith("Error")]
        assert errors == [], errors


def test_partial_volume_shapes_approximate_their_true_volume():
    spacing = (1.25, 0.75, 0.75)
    shape = (40, 64, 64)
    f = sphere_fraction(shape, spacing, (24.0, 24.0, 24.0), 10.0)
    assert fraction_volume_ml(f, spacing) == pytest.approx(known_volume_ml(10.0), rel=0.01)
    hu = sphere(shape, spacing, (24.0, 24.0, 24.0), 10.0, 60.0, -1000.0)
    assert hu.min() == pytest.approx(-1000.0) and hu.max() == pytest.approx(60.0)
    assert 0 < np.count_nonzero((hu > -1000) & (hu < 60))  # partial-volume rim
    c = cylinder_fraction(shape, spacing, (24.0, 24.0, 24.0), 8.0, 30.0)
    assert fraction_volume_ml(c, spacing) == pytest.approx(known_volume_ml(8.0, 30.0),
                                                           rel=0.01)
    cyl = cylinder(shape, spacing, (24.0, 24.0, 24.0), 8.0, 30.0, 300.0, 0.0)
    assert float(cyl.sum()) / 300.0 * np.prod(spacing) / 1000 == pytest.approx(
        known_volume_ml(8.0, 30.0), rel=0.01)


@pytest.mark.parametrize("laa", [0.0, 0.12, 0.4])
def test_synthetic_chest_has_known_laa_fraction(laa: float):
    from scipy import ndimage

    hu, meta = synthetic_chest((24, 64, 64), (2.5, 0.75, 0.75), laa, seed=4)
    lung = meta["lung_mask"]
    below = np.count_nonzero(hu[lung] < phantoms.LAA_THRESHOLD_HU)
    assert below == meta["laa_voxels"] == round(laa * lung.sum())
    assert meta["laa_fraction"] == pytest.approx(laa, abs=1e-3)
    assert meta["lung_volume_ml"] == pytest.approx(lung.sum() * 2.5 * 0.75 * 0.75 / 1000)
    assert np.all(hu[~meta["body_mask"]] == -1000)
    assert np.all(hu[meta["trachea_mask"]] == -1000) and meta["trachea_mask"].any()
    assert np.all(hu[meta["spine_mask"]] >= 380)
    assert np.array_equal(hu, np.rint(hu))
    near_trachea = ndimage.binary_dilation(meta["trachea_mask"], np.ones((3, 3, 3)))
    assert not (near_trachea & lung).any()  # the airway is separate from the lungs
    assert meta["trachea_mask"][-1].any() and not lung[-1].any()  # and above them
    assert not (meta["left_lung_mask"] & meta["right_lung_mask"]).any()
    assert meta["left_lung_mask"][..., 40:].any() and not meta["left_lung_mask"][..., :32].any()
    _, n = ndimage.label(hu < -400)
    assert n == 4  # outside air, two lungs and the trachea: four separate air regions


def test_synthetic_chest_round_trips_through_dicom(tmp_path: Path):
    hu, meta = synthetic_chest((20, 64, 64), (2.5, 0.75, 0.75), 0.25, seed=9)
    for slope in (1.0, 0.5):
        paths = write_series(tmp_path / str(slope), hu, (2.5, 0.75, 0.75), slope=slope)
        vol = assemble(_shuffled(paths))
        np.testing.assert_array_equal(vol.hu, hu)
        laa = np.count_nonzero(vol.hu[meta["lung_mask"]] < -950) / meta["lung_voxels"]
        assert laa == meta["laa_fraction"] == pytest.approx(0.25, abs=1e-3)
        assert meta["lung_mask"].sum() * vol.voxel_ml == pytest.approx(meta["lung_volume_ml"])
