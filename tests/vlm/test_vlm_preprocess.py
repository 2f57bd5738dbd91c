"""The image-to-text families' image input: the display reader (models/vlm/images.py), Libra's
preprocessing (models/vlm/libra/preprocess.py) and MedRegA's (models/vlm/medrega/preprocess.py),
on real DICOM and PNG files: the shared test data and pydicom's own test files."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut
from pydicom.sequence import Sequence

from models.base import ContractError, InputError
from models.cxr.image import read_radiograph
from models.vlm.images import DisplayImage, VlmInputError, read_display_image
from models.vlm.libra import preprocess as libra
from models.vlm.medrega import preprocess as medrega
from tests.conftest import shared_file


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def save(ds: Dataset, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def with_pixels(ds: Dataset, arr: np.ndarray) -> Dataset:
    """``ds`` (uncompressed, little endian) with its Pixel Data replaced by ``arr``."""
    ds = copy.deepcopy(ds)
    ds.PixelData = np.ascontiguousarray(arr.astype(ds.pixel_array.dtype)).tobytes()
    return ds


def mirrored_monochrome1(ds: Dataset) -> Dataset:
    """The same picture as MONOCHROME1: stored values mirrored in their own range, the window
    centre with them, and the Photometric Interpretation flipped."""
    arr = ds.pixel_array.astype(np.int64)
    k = int(arr.max() + arr.min())
    out = with_pixels(ds, k - arr)
    out.PhotometricInterpretation = "MONOCHROME1"
    if "WindowCenter" in out:
        out.WindowCenter = k - float(out.WindowCenter)
    return out


# -- the display reader -------------------------------------------------------------------

def test_png_is_pillow_rgb():
    path = shared_file("cxr/00000001_000.png")
    image = read_display_image(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == expected.shape
    assert (image.width, image.height) == Image.open(path).size
    assert np.array_equal(image.rgb, expected)
    assert image.modality == "" and image.photometric == "L"
    assert image.steps[-1] == "convert_rgb: from L"


def test_dx_goes_through_the_radiograph_reader():
    path = shared_file("cxr/dx_image.dcm")
    image = read_display_image(path)
    assert np.array_equal(image.rgb, read_radiograph(path).to_rgb_uint8())
    assert image.modality == "DX" and image.photometric == "MONOCHROME1"
    assert image.steps[0] == "read_radiograph" and "invert_monochrome1" in image.steps
    assert image.rgb.shape == (169, 211, 3) and (image.width, image.height) == (211, 169)


def test_ct_modality_lut_then_first_window():
    path = shared_file("ct/ct-3slice/01.dcm")
    ds = pydicom.dcmread(path)
    image = read_display_image(path)
    assert image.modality == "CT" and image.rgb.shape == (512, 512, 3)
    assert image.steps[1:3] == ("modality_lut: rescale", "voi_lut: window 1 of 1")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)  # LINEAR, PS3.3 C.11.2.1.2.1
    unit = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    diff = np.abs(image.rgb[..., 0].astype(int) - np.rint(unit * 255).astype(int))
    assert diff.max() <= 1
    assert np.array_equal(image.rgb[..., 0], image.rgb[..., 2])


def test_mr_series_slices():
    folder = shared_file("mr/prostate-adc")
    slices = sorted(folder.glob("*.dcm"))
    assert len(slices) >= 3
    images = [read_display_image(p) for p in slices[:3]]
    for image in images:
        assert image.modality == "MR" and image.rgb.shape == (256, 256, 3)
        assert "voi_lut: window 1 of 1" in image.steps
    assert not np.array_equal(images[0].rgb, images[2].rgb)


def test_monochrome1_is_inverted_back_to_the_original(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    # Without a window (min-max), the mirrored MONOCHROME1 copy reads back exactly.
    plain = copy.deepcopy(ds)
    del plain.WindowCenter, plain.WindowWidth
    original = read_display_image(save(plain, tmp_path, "m2.dcm"))
    flipped = read_display_image(save(mirrored_monochrome1(plain), tmp_path, "m1.dcm"))
    assert flipped.photometric == "MONOCHROME1" and "invert_monochrome1" in flipped.steps
    assert np.array_equal(flipped.rgb, original.rgb)
    # With the window mirrored too: LINEAR's half-value offset leaves at most one grey level.
    original = read_display_image(pydicom_file("MR_small.dcm"))
    flipped = read_display_image(save(mirrored_monochrome1(ds), tmp_path, "w1.dcm"))
    assert np.abs(flipped.rgb.astype(int) - original.rgb.astype(int)).max() <= 1
    # Libra's reader (max - data, then min-max) gives the same picture for both.
    assert np.array_equal(libra.libra_rgb(tmp_path / "m1.dcm"),
                          libra.libra_rgb(tmp_path / "m2.dcm"))


def test_ybr_colour_is_decoded_to_rgb():
    rgb = read_display_image(pydicom_file("SC_rgb_dcmtk_+eb+cr.dcm"))
    ybr = read_display_image(pydicom_file("SC_rgb_dcmtk_+eb+cy+np.dcm"))  # JPEG, YBR_FULL_422
    assert ybr.photometric == "YBR_FULL_422"
    assert np.abs(ybr.rgb.astype(int) - rgb.rgb.astype(int)).mean() < 3
    assert not np.array_equal(rgb.rgb[..., 0], rgb.rgb[..., 1])  # colour kept as colour
    us = read_display_image(pydicom_file("examples_jpeg2k.dcm"))  # YBR_RCT, general route
    assert us.modality == "US" and "decoded to RGB by pydicom" in us.steps[1]


def test_palette_colour_goes_through_its_lookup_tables():
    image = read_display_image(pydicom_file("examples_palette.dcm"))
    assert image.photometric == "PALETTE COLOR" and "palette_color_lut" in image.steps
    assert image.rgb.shape == (350, 800, 3)
    assert not np.array_equal(image.rgb[..., 0], image.rgb[..., 2])


def test_multiframe_frame_choice():
    path = pydicom_file("examples_ybr_color.dcm")  # US, 30 frames
    first = read_display_image(path)
    assert first.steps[0] == "decode_frame: 1 of 30"
    assert np.array_equal(first.rgb, read_display_image(path, frame=1).rgb)
    last = read_display_image(path, frame=30)
    assert last.steps[0] == "decode_frame: 30 of 30" and last.rgb.shape == first.rgb.shape
    assert not np.array_equal(first.rgb, last.rgb)
    for frame in (0, 31, -1):
        with pytest.raises(VlmInputError, match=rf"frame {frame} requested; the object has 30"):
            read_display_image(path, frame=frame)


def test_frame_out_of_range_for_single_frame_and_png():
    with pytest.raises(VlmInputError, match="frame 2 requested; the object has 1 frame"):
        read_display_image(pydicom_file("CT_small.dcm"), frame=2)
    with pytest.raises(VlmInputError, match="frame 2 requested"):
        read_display_image(shared_file("cxr/dx_image.dcm"), frame=2)
    with pytest.raises(VlmInputError, match="frame 2 requested; the PNG has 1 frame"):
        read_display_image(shared_file("cxr/00000001_000.png"), frame=2)


def test_slide_microscopy_tile():
    image = read_display_image(shared_file("pathology/sm_image.dcm"), frame=3)
    assert image.modality == "SM" and image.rgb.shape == (10, 10, 3)
    assert image.steps[0] == "decode_frame: 3 of 25"


def test_enhanced_object_takes_each_frames_window(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    windows = [(40.0, 400.0), (300.0, 1500.0)]
    references = []
    for i, (c, w) in enumerate(windows):
        single = copy.deepcopy(ds)
        single.WindowCenter, single.WindowWidth = c, w
        references.append(read_display_image(save(single, tmp_path, f"ref{i}.dcm")).rgb)
    multi = copy.deepcopy(ds)
    multi.PixelData = ds.PixelData * 2
    multi.NumberOfFrames = 2
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = ds.RescaleSlope, ds.RescaleIntercept
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    multi.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for c, w in windows:
        voi, group = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = c, w
        group.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(group)
    multi.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    del multi.RescaleSlope, multi.RescaleIntercept
    path = save(multi, tmp_path, "enhanced.dcm")
    for frame, reference in enumerate(references, start=1):
        image = read_display_image(path, frame=frame)
        assert f"functional_groups: frame {frame}" in image.steps
        assert "voi_lut: window 1 of 1" in image.steps
        assert np.array_equal(image.rgb, reference)


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))  # it has a window too
    item = Dataset()
    item.LUTDescriptor = [1024, 0, 16]
    item.LUTData = (np.arange(1024, dtype="<u2") * 16).tobytes()  # OW: x * 16, x below 1024
    ds.VOILUTSequence = Sequence([item])
    image = read_display_image(save(ds, tmp_path, "lut.dcm"))
    assert "voi_lut: lut 1 of 1" in image.steps
    x = np.clip(ds.pixel_array.astype(float), 0, 1023)
    assert np.array_equal(image.rgb[..., 0], np.rint(x / 1023 * 255).astype(np.uint8))


def test_constant_dicom_reads_as_black(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    path = save(with_pixels(ds, np.full_like(ds.pixel_array, 500)), tmp_path, "flat.dcm")
    image = read_display_image(path)
    assert not image.rgb.any() and "voi_lut: none, min-max (constant image)" in image.steps


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    image = read_display_image(path)
    assert image.rgb[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(VlmInputError, match="16-bit"):
        libra.libra_rgb(path)


@pytest.mark.parametrize("name", ["rtplan.dcm", "waveform_ecg.dcm"])
def test_non_image_dicom_is_refused_without_patient_data(name):
    path = pydicom_file(name)
    with pytest.raises(VlmInputError, match="is not an image \\(no Pixel Data\\)") as caught:
        read_display_image(path)
    message = str(caught.value)
    patient = str(pydicom.dcmread(path).get("PatientName", ""))
    for part in (word for word in patient.split("^") if len(word) >= 4):
        assert part not in message
    assert path.name not in message
    with pytest.raises(VlmInputError, match="no Pixel Data"):
        libra.libra_rgb(path)


def test_segmentation_is_refused():
    with pytest.raises(VlmInputError, match="Segmentation Storage is a segmentation"):
        read_display_image(shared_file("ct/ct-3slice/liver_seg.dcm"))


def test_unreadable_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    bmp = tmp_path / "image.bmp"
    Image.new("RGB", (4, 4)).save(bmp)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    cases = [(text, "neither DICOM"), (bmp, "BMP image, not DICOM, PNG or JPEG"),
             (tmp_path / "missing.png", "cannot be opened"), (tmp_path, "cannot be opened"),
             (broken, "not an image|cannot be read as DICOM")]
    with warnings.catch_warnings():  # pydicom warns on the broken header
        warnings.simplefilter("ignore")
        for path, message in cases:
            with pytest.raises(VlmInputError, match=message):
                read_display_image(path)
            with pytest.raises(VlmInputError):
                libra.libra_rgb(path)
    assert issubclass(VlmInputError, InputError)


def test_display_image_contract():
    with pytest.raises(ContractError):
        DisplayImage(np.zeros((4, 4, 3), dtype=np.float32), 4, 4)
    with pytest.raises(ContractError):
        DisplayImage(np.zeros((4, 5, 3), dtype=np.uint8), 4, 5)


# -- Libra ----------------------------------------------------------------------------------

def test_libra_steps_and_constants():
    assert libra.STEPS == ("voi_lut_minmax_uint8", "pad_to_square_mean",
                           "resize_shortest_518_bicubic", "center_crop_518", "rescale_1_255",
                           "normalise_rad_dino")
    assert libra.SIZE == 518
    assert libra.BACKGROUND == (135, 135, 135)  # int(0.5307 * 255)
    assert libra.pad_colour((0.5, 0.25, 1.0)) == (127, 63, 255)


def test_libra_dicom_reader_follows_the_authors():
    path = shared_file("cxr/dx_image.dcm")
    rgb = libra.libra_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (169, 211, 3)
    ds = pydicom.dcmread(path)
    data = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
    data = data.max() - data  # MONOCHROME1
    data = data - data.min()
    expected = (data / data.max() * 255).astype(np.uint8)  # truncation
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 1], expected)
    # Same orientation as the display reader (white is bone in both).
    display = read_display_image(path).rgb[..., 0].astype(float)
    assert np.corrcoef(display.ravel(), rgb[..., 0].astype(float).ravel())[0, 1] > 0.9


def test_libra_png_is_pillow_rgb():
    path = shared_file("cxr/00000001_000.png")
    assert np.array_equal(libra.libra_rgb(path), np.asarray(Image.open(path).convert("RGB")))


def test_libra_refuses_a_blank_image(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    path = save(with_pixels(ds, np.full_like(ds.pixel_array, 500)), tmp_path, "blank.dcm")
    with pytest.raises(VlmInputError, match="the image is blank"):
        libra.libra_rgb(path)
    with pytest.raises(VlmInputError, match="the image is blank"):
        libra.preprocess(path)


def test_libra_refuses_multiframe():
    with pytest.raises(VlmInputError, match="multi-frame object \\(30 frames\\)"):
        libra.libra_rgb(pydicom_file("examples_ybr_color.dcm"))


def test_expand_to_square_placement_and_background():
    bg = (135, 135, 135)
    wide = libra.expand_to_square(Image.new("RGB", (30, 11), (200, 10, 20)), bg)
    arr = np.asarray(wide)
    assert wide.size == (30, 30)
    top = (30 - 11) // 2  # 9
    assert (arr[top:top + 11] == (200, 10, 20)).all()
    assert (arr[:top] == bg).all() and (arr[top + 11:] == bg).all()
    tall = np.asarray(libra.expand_to_square(Image.new("RGB", (10, 31), (0, 0, 0)), bg))
    left = (31 - 10) // 2  # 10
    assert tall.shape == (31, 31, 3)
    assert (tall[:, left:left + 10] == 0).all()
    assert (tall[:, :left] == bg).all() and (tall[:, left + 10:] == bg).all()
    square = Image.new("RGB", (8, 8))
    assert libra.expand_to_square(square, bg) is square


def test_resize_shortest_and_center_crop():
    wide = libra.resize_shortest(Image.new("RGB", (1000, 500)))
    assert wide.size == (1036, 518)  # int(518 * 1000 / 500)
    assert libra.resize_shortest(Image.new("RGB", (500, 1001))).size == (518, 1037)
    ramp = np.tile(np.arange(100, dtype=np.uint8), (60, 1))
    img = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    crop = np.asarray(libra.center_crop(img, 51))
    top, left = (60 - 51) // 2, (100 - 51) // 2  # floor, as the processor does
    assert np.array_equal(crop, np.asarray(img)[top:top + 51, left:left + 51])
    with pytest.raises(VlmInputError, match="smaller than the 61 crop"):
        libra.center_crop(img, 61)


@pytest.mark.parametrize("size", [518, 56])
def test_rad_dino_transform_normalises_a_constant_image(size):
    x = libra.rad_dino_transform(Image.new("RGB", (600, 400), (200, 200, 200)), size=size)
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    expected = (200 / 255 - 0.5307) / 0.2583
    assert torch.allclose(x, torch.full_like(x, expected), atol=1e-5)


def test_rad_dino_transform_matches_transformers_bit_processor():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = (getattr(transformers, "BitImageProcessorPil", None)
               or transformers.BitImageProcessor)
        processor = cls(size={"shortest_edge": 518}, crop_size={"height": 518, "width": 518},
                        resample=3, image_mean=list(libra.IMAGE_MEAN),
                        image_std=list(libra.IMAGE_STD), do_convert_rgb=True)
    rgb = libra.libra_rgb(shared_file("cxr/dx_image.dcm"))
    for img in (Image.fromarray(rgb), libra.expand_to_square(Image.fromarray(rgb))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = np.asarray(processor(img, return_tensors="np")["pixel_values"][0])
        assert torch.allclose(libra.rad_dino_transform(img), torch.from_numpy(ref), atol=1e-6)


def test_libra_preprocess_shapes():
    path = shared_file("cxr/dx_image.dcm")
    x = libra.preprocess(path)
    assert x.shape == (3, 518, 518) and x.dtype == torch.float32
    small = libra.preprocess(path, size=56)
    assert small.shape == (3, 56, 56)
    # The padding holds the mean, so it normalises to 0 (up to the mean's truncation to 135).
    assert abs(float(x[0, 0, 0])) < 0.01


def test_libra_pair_without_prior_duplicates_the_current():
    path = shared_file("cxr/00000001_000.png")
    pair, dummy = libra.preprocess_pair(path)
    assert dummy is True
    assert pair.shape == (2, 1, 3, 518, 518) and pair.dtype == torch.float32
    assert torch.equal(pair[0], pair[1])
    assert torch.equal(pair[0, 0], libra.preprocess(path))


def test_libra_pair_with_prior():
    current, prior = shared_file("cxr/00000001_000.png"), shared_file("cxr/00027426_000.png")
    pair, dummy = libra.preprocess_pair(current, prior, size=56)
    assert dummy is False and pair.shape == (2, 1, 3, 56, 56)
    assert torch.equal(pair[0, 0], libra.preprocess(current, size=56))
    assert torch.equal(pair[1, 0], libra.preprocess(prior, size=56))
    assert not torch.equal(pair[0], pair[1])


# -- MedRegA --------------------------------------------------------------------------------

def test_medrega_transform_normalises_a_constant_image():
    assert medrega.STEPS == ("rgb", "resize_448_bicubic", "to_tensor", "imagenet_normalise")
    x = medrega.transform(Image.new("RGB", (640, 300), (10, 128, 250)))
    assert x.shape == (3, 448, 448) and x.dtype == torch.float32
    for channel, v in enumerate((10, 128, 250)):
        expected = (v / 255 - medrega.MEAN[channel]) / medrega.STD[channel]
        assert torch.allclose(x[channel], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    assert medrega.transform(Image.new("RGB", (30, 20)), size=28).shape == (3, 28, 28)


def test_medrega_target_ratios():
    ratios = medrega.target_ratios(1, 6)
    assert len(ratios) == 14 and ratios[0] == (1, 1)
    products = [c * r for c, r in ratios]
    assert products == sorted(products) and max(products) == 6
    assert set(medrega.target_ratios(2, 4)) == {(1, 2), (2, 1), (1, 3), (3, 1), (1, 4),
                                                 (4, 1), (2, 2)}


@pytest.mark.parametrize(("size", "tiles"), [
    ((896, 448), 2), ((448, 448), 1), ((448, 896), 2), ((1344, 448), 3),
    # square: (1, 1) and (2, 2) tie; (2, 2) wins once the area passes 0.5 * 448^2 * 4
    ((633, 633), 1), ((634, 634), 4), ((896, 896), 4),
    # aspect 1.25: (1, 1), (2, 2) and (3, 2) tie at 0.25
    ((700, 560), 1), ((800, 640), 4), ((1120, 896), 6),
])
def test_medrega_dynamic_tile_counts(size, tiles):
    out = medrega.dynamic_tiles(Image.new("RGB", size))
    assert len(out) == tiles and all(t.size == (448, 448) for t in out)


def test_medrega_thumbnail_only_with_several_tiles():
    two = medrega.dynamic_tiles(Image.new("RGB", (896, 448)), use_thumbnail=True)
    assert len(two) == 3 and two[-1].size == (448, 448)
    assert len(medrega.dynamic_tiles(Image.new("RGB", (448, 448)), use_thumbnail=True)) == 1


def test_medrega_tiles_run_row_by_row():
    # A 3 x 2 grid (1344 x 896) whose cells hold their own index.
    arr = np.zeros((896, 1344, 3), dtype=np.uint8)
    for i in range(6):
        row, col = divmod(i, 3)
        arr[row * 448:(row + 1) * 448, col * 448:(col + 1) * 448] = 40 * (i + 1)
    tiles = medrega.dynamic_tiles(Image.fromarray(arr))
    assert [int(np.asarray(t)[224, 224, 0]) for t in tiles] == [40, 80, 120, 160, 200, 240]


def test_medrega_preprocess_shapes():
    rgb = np.zeros((448, 896, 3), dtype=np.uint8)
    rgb[:, 448:] = 255
    one = medrega.preprocess(rgb)
    assert one.shape == (1, 3, 448, 448) and one.dtype == torch.float32
    tiles = medrega.preprocess(rgb, dynamic=True)
    assert tiles.shape == (2, 3, 448, 448)
    assert tiles[0].max() < 0 < tiles[1].min()  # black left tile, white right tile
    assert medrega.preprocess(rgb, dynamic=True, use_thumbnail=True).shape == (3, 3, 448, 448)
    assert medrega.preprocess(rgb, dynamic=True, max_num=1).shape == (1, 3, 448, 448)
    assert medrega.preprocess(rgb, size=56, dynamic=True).shape == (2, 3, 56, 56)


def test_medrega_preprocess_real_image():
    image = read_display_image(shared_file("ct/ct-3slice/01.dcm"))
    x = medrega.preprocess(image.rgb)
    assert x.shape == (1, 3, 448, 448) and torch.isfinite(x).all()


def test_medrega_refuses_non_rgb_arrays():
    for bad in (np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 4, 3), dtype=np.float32),
                np.zeros((0, 4, 3), dtype=np.uint8)):
        with pytest.raises(VlmInputError, match="expected an \\(H, W, 3\\) uint8 image"):
            medrega.preprocess(bad)
