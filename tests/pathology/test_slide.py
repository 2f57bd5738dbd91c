"""open_slide / Slide on the real CMU-1-Small-Region SVS, highdicom's synthetic DICOM WSM, and
small pyramids written here (a tiled TIFF, a two-level DICOM series)."""

from __future__ import annotations

import copy
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.uid import generate_uid

from models.pathology.slide import ReadStats, SlideError, open_slide
from tests.conftest import shared_file

SVS = "pathology/CMU-1-Small-Region.svs"
SM = "pathology/sm_image.dcm"


@pytest.fixture(scope="module")
def svs():
    with open_slide(shared_file(SVS)) as slide:
        yield slide


def test_svs_levels_size_and_mpp(svs):
    assert svs.source == "svs" and svs.vendor == "aperio"
    assert len(svs.levels) == 1
    lv = svs.levels[0]
    assert (lv.width, lv.height) == (2220, 2967)
    assert (lv.tile_width, lv.tile_height) == (240, 240)
    assert lv.downsample == 1.0
    # aperio.MPP = 0.499 in the ImageDescription
    assert svs.mpp == pytest.approx((0.499, 0.499))
    assert svs.objective_power == 20.0
    assert svs.dicom is None


def test_svs_read_region(svs):
    import tiffslide

    arr = svs.read_region(0, 100, 200, 300, 150)
    assert arr.shape == (150, 300, 3) and arr.dtype == np.uint8
    ref = np.asarray(tiffslide.TiffSlide(shared_file(SVS)).read_region((100, 200), 0,
                                                                        (300, 150)))[..., :3]
    assert np.array_equal(arr, ref)
    with pytest.raises(SlideError, match="outside level 0"):
        svs.read_region(0, 2000, 0, 300, 10)
    with pytest.raises(SlideError, match="out of range"):
        svs.read_region(1, 0, 0, 10, 10)


def test_svs_thumbnail_reads_one_tile_row_at_a_time(svs):
    w, h = svs.dimensions
    svs.stats = ReadStats()
    tracemalloc.start()
    try:
        thumb, scale = svs.thumbnail(512)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert thumb.shape == (512, 383, 3) and thumb.dtype == np.uint8
    assert scale == pytest.approx(512 / 2967)
    # every read is at most one full-width row of 240-px tiles, never the whole base level
    assert svs.stats.largest <= w * 240
    assert svs.stats.pixels == w * h  # each pixel read once
    base_bytes = w * h * 3  # 19.8 MB
    assert peak < base_bytes / 2, f"tracemalloc peak {peak} vs base level {base_bytes}"


def test_svs_thumbnail_equals_box_resize_of_whole_level(svs):
    thumb, _ = svs.thumbnail(300)
    whole = svs.read_region(0, 0, 0, *svs.dimensions)
    ref = np.asarray(Image.fromarray(whole).resize((thumb.shape[1], thumb.shape[0]),
                                                   Image.Resampling.BOX))
    assert np.abs(ref.astype(int) - thumb).max() <= 1


def test_tiles_cover_the_level(svs):
    tiles = list(svs.tiles(0, 512))
    assert tiles[0] == (0, 0, 512, 512)
    assert len(tiles) == 5 * 6
    assert sum(w * h for _, _, w, h in tiles) == 2220 * 2967
    assert all(x + w <= 2220 and y + h <= 2967 for x, y, w, h in tiles)
    over = list(svs.tiles(0, 512, overlap=64))
    assert over[1][0] == 448 and over[-1][0] + over[-1][2] == 2220
    with pytest.raises(SlideError):
        list(svs.tiles(0, 100, overlap=100))


def test_best_level_for_mpp_single_level(svs):
    assert svs.best_level_for_mpp(0.5) == 0
    assert svs.best_level_for_mpp(0.25) == 0  # finer than the base: the base


def _pyramid_tiff(path: Path, mpp: float | None = 0.25) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1000, 1500, 3), dtype=np.uint8)
    opts = dict(tile=(256, 256), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path) as tw:
        for k, kw in ((1, {"subifds": 2}), (2, {"subfiletype": 1}), (4, {"subfiletype": 1})):
            if mpp:
                kw = {**kw, "resolution": (1e4 / mpp / k, 1e4 / mpp / k),
                      "resolutionunit": "CENTIMETER"}
            tw.write(base[::k, ::k], **opts, **kw)
    return base


def test_pyramid_tiff_levels_and_thumbnail_from_lowest_sufficient_level(tmp_path):
    base = _pyramid_tiff(tmp_path / "pyr.tif")
    with open_slide(tmp_path / "pyr.tif") as slide:
        assert slide.source == "tiff"
        assert [lv.size for lv in slide.levels] == [(1500, 1000), (750, 500), (375, 250)]
        assert [lv.downsample for lv in slide.levels] == [1.0, 2.0, 4.0]
        assert [lv.mpp for lv in slide.levels] == [(0.25, 0.25), (0.5, 0.5), (1.0, 1.0)]
        assert slide.best_level_for_mpp(0.5) == 1
        assert slide.best_level_for_mpp(0.9) == 1  # never coarser than asked
        assert slide.best_level_for_mpp(0.1) == 0
        assert slide.best_level_for_mpp(8.0) == 2
        assert np.array_equal(slide.read_region(1, 10, 20, 30, 40), base[::2, ::2][20:60, 10:40])
        slide.stats = ReadStats()
        thumb, scale = slide.thumbnail(300)
        assert thumb.shape == (200, 300, 3) and scale == pytest.approx(0.2)
        assert set(slide.stats.by_level) == {2}  # 375x250 is the smallest level >= 300x200
        slide.stats = ReadStats()
        slide.thumbnail(600)
        assert set(slide.stats.by_level) == {1}
        slide.stats = ReadStats()
        thumb, scale = slide.thumbnail(5000)  # never larger than the base
        assert thumb.shape == (1000, 1500, 3) and scale == 1.0 and set(slide.stats.by_level) == {0}
        assert np.array_equal(thumb, base)


def test_tiff_without_mpp(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.full((300, 400, 3), 240, np.uint8),
                     tile=(128, 128), photometric="rgb")
    with open_slide(tmp_path / "plain.tif") as slide:
        assert slide.source == "tiff" and slide.mpp is None
        with pytest.raises(SlideError, match="microns-per-pixel"):
            slide.best_level_for_mpp(0.5)


def test_dicom_sm_image():
    path = shared_file(SM)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with open_slide(path) as slide:
        assert slide.source == "dicom"
        assert len(slide.levels) == 1
        lv = slide.levels[0]
        assert (lv.width, lv.height) == (50, 50) and (lv.tile_width, lv.tile_height) == (10, 10)
        # PixelSpacing 0.000499 mm in the shared functional groups
        assert slide.mpp == pytest.approx((0.499, 0.499))
        arr = slide.read_region(0, 5, 10, 30, 20)
        assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8
        refs = slide.dicom
        assert refs.series_instance_uid == ds.SeriesInstanceUID
        assert refs.study_instance_uid == ds.StudyInstanceUID
        assert refs.frame_of_reference_uid == ds.FrameOfReferenceUID
        assert refs.container_identifier == "S19-1_A_1_1"
        assert lv.sop_instance_uids == (ds.SOPInstanceUID,) == refs.sop_instance_uids
        thumb, scale = slide.thumbnail(25)
        assert thumb.shape == (25, 25, 3) and scale == 0.5


def test_dicom_grayscale_comes_back_rgb():
    with open_slide(shared_file("pathology/sm_image_grayscale.dcm")) as slide:
        arr = slide.read_region(0, 0, 0, 50, 50)
        assert arr.shape == (50, 50, 3) and arr.dtype == np.uint8
        assert np.array_equal(arr[..., 0], arr[..., 2])


def _second_level(src: Path, out: Path) -> np.ndarray:
    """A 2x-downsampled level of ``src`` in the same series (TILED_FULL frames of the same
    size, padded with white), as a scanner would write it. Returns its pixels."""
    ds = pydicom.dcmread(src)
    frames = ds.pixel_array
    rows, cols = ds.Rows, ds.Columns
    w, h = ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows
    nx = -(-w // cols)
    full = np.full((-(-h // rows) * rows, nx * cols, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        full[(i // nx) * rows:(i // nx + 1) * rows, (i % nx) * cols:(i % nx + 1) * cols] = f
    low = full[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
    h2, w2 = low.shape[:2]
    nx2, ny2 = -(-w2 // cols), -(-h2 // rows)
    pad = np.full((ny2 * rows, nx2 * cols, 3), 255, np.uint8)
    pad[:h2, :w2] = low
    tiles = [pad[j * rows:(j + 1) * rows, i * cols:(i + 1) * cols]
             for j in range(ny2) for i in range(nx2)]
    d2 = copy.deepcopy(ds)
    d2.SOPInstanceUID = d2.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    d2.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    d2.TotalPixelMatrixColumns, d2.TotalPixelMatrixRows = w2, h2
    d2.NumberOfFrames, d2.InstanceNumber = len(tiles), 3
    pm = d2.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    pm.PixelSpacing = [float(v) * 2 for v in pm.PixelSpacing]
    d2.PixelData = np.stack(tiles).tobytes()
    d2.save_as(out)
    return low


def test_dicom_two_level_series(tmp_path):
    src = shared_file(SM)
    low = _second_level(src, tmp_path / "level1.dcm")
    with open_slide([src, tmp_path / "level1.dcm"]) as slide:
        assert [lv.size for lv in slide.levels] == [(50, 50), (25, 25)]
        assert slide.levels[1].downsample == 2.0
        assert slide.levels[1].mpp == pytest.approx((0.998, 0.998))
        assert np.array_equal(slide.read_region(1, 0, 0, 25, 25), low)
        assert len(slide.dicom.sop_instance_uids) == 2
        assert slide.best_level_for_mpp(1.0) == 1
        slide.stats = ReadStats()
        thumb, _ = slide.thumbnail(20)
        assert thumb.shape == (20, 20, 3) and set(slide.stats.by_level) == {1}
    # the same series from a folder, with a bulk annotation beside it (passed over)
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(src, folder / "a.dcm")
    shutil.copy(tmp_path / "level1.dcm", folder / "b.dcm")
    shutil.copy(shared_file("pathology/sm_annotations.dcm"), folder / "ann.dcm")
    with open_slide(folder) as slide:
        assert slide.source == "dicom" and len(slide.levels) == 2


def test_refusals(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideError, match="no file given"):
        open_slide([])
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(SlideError, match="neither a TIFF nor a DICOM"):
        open_slide(tmp_path / "x.png")
    with pytest.raises(SlideError, match="CT Image Storage is not VL Whole Slide"):
        open_slide(shared_file("ct/ct-3slice/01.dcm"))
    with pytest.raises(SlideError, match="Bulk Simple Annotations Storage is not VL Whole"):
        open_slide(shared_file("pathology/sm_annotations.dcm"))
    with pytest.raises(SlideError, match="2 series"):
        open_slide([shared_file(SM), shared_file("pathology/sm_image_dots.dcm")])
    with pytest.raises(SlideError, match="mixed"):
        open_slide([shared_file(SVS), shared_file(SM)])
    with pytest.raises(SlideError, match="a TIFF slide is one file"):
        open_slide([shared_file(SVS), shared_file(SVS)])
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 30, 40), np.uint8))
    with pytest.raises(SlideError, match="could not be opened as a slide"):
        open_slide(tmp_path / "stack.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideError, match="holds no DICOM slide"):
        open_slide(tmp_path / "empty")
    assert issubclass(SlideError, ValueError)
