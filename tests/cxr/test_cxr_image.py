"""CXR image input: each named step on real pydicom test files and on radiographs built with
pydicom or Pillow here, and whole files read end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_windowing

from models.base import InputError
from models.cxr.image import (
    STEPS,
    CxrInputError,
    Radiograph,
    apply_modality_lut,
    apply_voi_lut,
    check_image_object,
    invert_monochrome1,
    pixel_spacing,
    read_radiograph,
    scale_to_unit,
)
from tests.conftest import shared_file


def _radiograph(arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int | None = None,
                sop: str = uid.DigitalXRayImageStorageForPresentation, **attrs) -> Dataset:
    """A one-frame DX (or other) dataset around ``arr``, with file meta so it can be saved."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = sop, uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits or arr.dtype.itemsize * 8)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(bits: int = 12) -> np.ndarray:
    return np.linspace(0, 2**bits - 1, 64 * 64).reshape(64, 64).astype(np.uint16)


def test_steps_are_named_in_pipeline_order():
    assert STEPS == ("modality_lut", "voi_lut", "invert_monochrome1", "scale_to_unit")


def test_monochrome1_dense_pixel_becomes_bright(tmp_path):
    # MONOCHROME1: the minimum is white (PS3.3 C.7.6.3.1.2), so dense bone is stored low.
    arr = np.full((32, 32), 4000, dtype=np.uint16)
    arr[10:20, 10:20] = 100  # the dense (bone) region
    ds = _radiograph(arr, "MONOCHROME1", 12)
    inverted = invert_monochrome1(apply_modality_lut(ds.pixel_array, ds), ds)
    unit = scale_to_unit(inverted, ds)
    assert unit[15, 15] > 0.95 and unit[0, 0] < 0.05
    image = read_radiograph(_save(ds, tmp_path / "m1.dcm"))
    assert image.pixels[15, 15] > 0.95 and image.pixels[0, 0] < 0.05
    assert image.photometric == "MONOCHROME1" and "invert_monochrome1" in image.steps


def test_window_of_a_real_pydicom_file_matches_pydicom_windowing():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # Window 600/1600, signed 16 bits
    arr = ds.pixel_array
    ours = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    theirs = apply_windowing(arr, ds)  # pydicom maps to the stored range, we to [0, 1]
    lo, hi = -(2**15), 2**15 - 1
    assert np.allclose(ours, (theirs - lo) / (hi - lo), atol=1e-6)
    assert 0 <= ours.min() and ours.max() <= 1


def test_window_linear_exact_sigmoid_and_second_window_chosen_by_index():
    x = np.array([0.0, 1000.0, 2000.0, 3000.0, 4000.0])
    ds = _radiograph(_ramp(), WindowCenter=[2000, 1000], WindowWidth=[2000, 500])
    assert np.allclose(apply_voi_lut(x, ds), [0, 0, 0.50025, 1, 1], atol=1e-4)  # C.11.2.1.2.1
    assert np.allclose(apply_voi_lut(x, ds, index=1), [0, 0.501, 1, 1, 1], atol=1e-3)
    ds.VOILUTFunction = "LINEAR_EXACT"
    assert np.allclose(apply_voi_lut(x, ds), [0, 0, 0.5, 1, 1])
    ds.VOILUTFunction = "SIGMOID"
    assert np.allclose(apply_voi_lut(x, ds)[2], 0.5) and apply_voi_lut(x, ds)[4] > 0.98
    with pytest.raises(CxrInputError, match="window 3 requested; the object has 2"):
        apply_voi_lut(x, ds, index=2)


def test_voi_lut_sequence_is_applied_and_preferred_to_the_window(tmp_path):
    # An 8-bit VOI LUT of 4096 entries (a common CR shape): the input is 12 bits.
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = (np.arange(4096) // 16).astype(np.uint16).tobytes()
    ds = _radiograph(_ramp(), WindowCenter=100, WindowWidth=10, VOILUTSequence=[item])
    ds.VOILUTSequence[0]["LUTData"].VR = "OW"
    out = apply_voi_lut(np.array([0, 255, 256, 2048, 4095, 5000]), ds)
    assert np.allclose(out, np.array([0, 15, 16, 128, 255, 255]) / 255)
    image = read_radiograph(_save(ds, tmp_path / "vlut.dcm"))
    assert "voi_lut:lut 1" in image.steps
    assert image.pixels[0, 0] == 0 and image.pixels[-1, -1] == 1
    assert np.all(np.diff(image.pixels.ravel()) >= 0)  # the ramp stays a ramp


def test_modality_lut_sequence_then_window(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new("LUTData", "US", [v * 16 for v in range(256)])  # US here, OW in the VOI test
    ds = _radiograph(np.arange(256, dtype=np.uint8).reshape(16, 16), bits=8,
                     ModalityLUTSequence=[item], WindowCenter=2048, WindowWidth=4096)
    assert apply_modality_lut(np.array([0, 10, 255]), ds).tolist() == [0, 160, 4080]
    image = read_radiograph(_save(ds, tmp_path / "mlut.dcm"))
    assert image.steps[:2] == ("modality_lut:lut", "voi_lut:window 1")
    assert image.pixels[-1, -1] == pytest.approx(4080 / 4095, abs=1e-3)


def test_16_bit_input_keeps_its_range_in_unit_interval(tmp_path):
    arr = np.linspace(0, 65535, 128 * 128).reshape(128, 128).astype(np.uint16)
    image = read_radiograph(_save(_radiograph(arr, bits=16), tmp_path / "16.dcm"))
    assert image.bits_stored == 16 and image.pixels.dtype == np.float32
    assert image.pixels.min() == 0 and image.pixels.max() == 1
    assert np.allclose(image.pixels, arr / 65535, atol=1e-6)
    assert image.steps[-1] == "scale_to_unit:bits stored 16"


def test_for_processing_without_voi_gets_a_percentile_window(tmp_path):
    arr = _ramp(14)
    arr[0, :4] = 16383  # a few saturated pixels must not set the range
    ds = _radiograph(arr, bits=14, sop=uid.DigitalXRayImageStorageForProcessing,
                     PresentationIntentType="FOR PROCESSING")
    image = read_radiograph(_save(ds, tmp_path / "proc.dcm"))
    assert image.steps[-1] == "scale_to_unit:percentile 0.5-99.5"
    assert image.pixels.min() == 0 and image.pixels.max() == 1


def test_rgb_png_and_16_bit_and_grey_alpha_pngs(tmp_path):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 51
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    image = read_radiograph(tmp_path / "rgb.png")
    assert image.source == "png" and image.pixels.shape == (20, 30, 3)
    assert np.allclose(image.pixels[0, 0], [1, 0, 0.2])
    assert (image.to_rgb_uint8() == rgb).all()
    grey16 = np.linspace(0, 65535, 400).reshape(20, 20).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    image = read_radiograph(tmp_path / "g16.png")
    assert image.bits_stored == 16 and np.allclose(image.pixels, grey16 / 65535, atol=1e-6)
    Image.fromarray(np.full((8, 8, 2), 200, dtype=np.uint8), "LA").save(tmp_path / "la.png")
    image = read_radiograph(tmp_path / "la.png")
    assert image.pixels.shape == (8, 8) and image.to_rgb_uint8().shape == (8, 8, 3)


def test_jpeg_is_read(tmp_path):
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(tmp_path / "x.jpg")
    image = read_radiograph(tmp_path / "x.jpg")
    assert image.source == "jpeg" and abs(float(image.pixels.mean()) - 128 / 255) < 0.01


def test_shared_nih_png_is_greyscale():
    image = read_radiograph(shared_file("cxr/00000001_000.png"))
    assert image.pixels.shape == (512, 512) and image.photometric == "L"


def test_multi_frame_object_is_refused_with_a_clear_message():
    path = Path(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    with pytest.raises(CxrInputError, match=r"multi-frame object \(NumberOfFrames 2\)"):
        read_radiograph(path)


def test_basic_text_sr_is_refused_as_having_no_image():
    with pytest.raises(InputError, match="SOP class Basic Text SR Storage has no image"):
        read_radiograph(Path(get_testdata_file("reportsi.dcm")))


def test_ct_slice_and_32_bit_image_are_refused():
    with pytest.raises(CxrInputError, match="CT Image Storage is not a radiograph"):
        check_image_object(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    with pytest.raises(CxrInputError, match="Bits Stored 32"):
        read_radiograph(Path(get_testdata_file("SC_rgb_rle_32bit.dcm")))


def test_secondary_capture_rgb_dicom_is_read_in_colour():
    image = read_radiograph(Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))  # YBR_FULL JPEG
    assert image.pixels.shape == (100, 100, 3) and image.photometric == "YBR_FULL"
    assert image.pixels[0, 0, 0] > 0.95 and image.pixels[0, 0, 1] < 0.05  # red stays red


def test_spacing_difference_between_pixel_and_imager_spacing_is_recorded():
    ds = _radiograph(_ramp(), ImagerPixelSpacing=[0.143, 0.143], PixelSpacing=[0.139, 0.139],
                     PixelSpacingCalibrationType="GEOMETRY")
    spacing, source, note = pixel_spacing(ds)
    assert spacing == (0.139, 0.139) and source == "PixelSpacing"
    assert "differs from Imager Pixel Spacing 0.143" in note and "GEOMETRY" in note
    ds.PixelSpacing = [0.143, 0.143]
    assert pixel_spacing(ds) == ((0.143, 0.143), "ImagerPixelSpacing", "")
    del ds.ImagerPixelSpacing
    assert pixel_spacing(ds) == ((0.143, 0.143), "PixelSpacing", "")
    del ds.PixelSpacing
    assert pixel_spacing(ds) == (None, "none", "")


def test_real_dx_image_read_end_to_end():
    image = read_radiograph(shared_file("cxr/dx_image.dcm"))
    # highdicom's DX thorax: MONOCHROME1, window 128/256, spacing 1.2 mm in both attributes,
    # Series Description "CHEST" and no View Position: the view is not known.
    assert image.source == "dicom" and image.modality == "DX" and image.pixels.shape == (169, 211)
    assert image.sop_class == uid.DigitalXRayImageStorageForPresentation
    assert image.steps == ("modality_lut:rescale", "voi_lut:window 1", "invert_monochrome1",
                           "scale_to_unit:voi output")
    assert image.pixel_spacing_mm == pytest.approx((1.2, 1.2012))
    assert image.spacing_source == "ImagerPixelSpacing" and image.spacing_note == ""
    assert (image.view, image.view_source) == ("", "none")
    raw = pydicom.dcmread(shared_file("cxr/dx_image.dcm")).pixel_array
    assert image.pixels[raw == raw.min()].min() > image.pixels[raw == raw.max()].max()


def test_radiograph_refuses_pixels_outside_unit_range():
    with pytest.raises(ValueError, match="within"):
        Radiograph(np.full((2, 2), 1.5, dtype=np.float32), "png")
    with pytest.raises(ValueError, match="float32"):
        Radiograph(np.zeros((2, 2)), "png")


def test_not_an_image_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(CxrInputError, match="neither DICOM"):
        read_radiograph(tmp_path / "notes.txt")
