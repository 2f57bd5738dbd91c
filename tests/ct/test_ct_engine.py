"""The ct-quant engine on real files and on DICOM phantoms written by the tests: the liver of
the real 3-slice CT measured through its SEG equals a direct computation; a synthetic chest
gives its lung volume and LAA-950; a tilted series is refused with the reason in the result; a
region sent with a question is measured; the draft states the measured findings with their
evidence and knowledge citations."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from app.dicom.headers import read_header
from models.base import ModelSpec, Prompt, StudyInput, build
from models.masks import read_mask
from tests.conftest import shared_file
from tests.ct.phantoms import synthetic_chest, write_series


def study_of(paths: list[Path], tmp_path: Path, prompt: Prompt | None = None) -> StudyInput:
    return StudyInput(domain="ct", paths=list(paths), metadata=[read_header(p) for p in paths],
                      output_dir=tmp_path / "out", prompt=prompt)


@pytest.fixture(scope="module")
def engine():
    return build(ModelSpec("ct-quant", "1.0.0", "builtin"))


def test_the_liver_of_the_real_ct_measured_through_its_seg(engine, tmp_path):
    seg_path = shared_file("ct/ct-3slice/liver_seg.dcm")
    slices = sorted(seg_path.parent.glob("0*.dcm"))
    result = engine.run(study_of([*slices, seg_path], tmp_path))
    by = {m.name: m for m in result.measurements}

    # the same voxels, directly: slices in position order, HU by rescale, the SEG's frames
    datasets = sorted((pydicom.dcmread(p) for p in slices),
                      key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
                   for d in datasets])
    seg = hd.seg.segread(seg_path)
    mask = np.zeros(hu.shape, dtype=bool)
    for k, d in enumerate(datasets):
        try:
            px = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[d.SOPInstanceUID], segment_numbers=[1],
                ignore_spatial_locations=True)
        except (ValueError, KeyError):
            continue
        mask[k] = px[0, :, :, 0] > 0
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    dz = abs(z[1] - z[0])
    dy, dx = (float(v) for v in datasets[0].PixelSpacing)
    assert by["liver_volume"].value == pytest.approx(mask.sum() * dx * dy * dz / 1000, rel=1e-9)
    assert by["liver_mean"].value == pytest.approx(hu[mask].mean(), abs=1e-6)
    assert by["liver_volume"].unit == "mL" and by["liver_mean"].unit == "[hnsf'U]"
    assert by["liver_mean"].where.slices == (int(np.flatnonzero(mask.any((1, 2)))[0]),
                                             int(np.flatnonzero(mask.any((1, 2)))[-1]))
    (steatosis,) = [f for f in result.findings if f.label == "Hepatic steatosis"]
    # the headers do not give the phase, and the criteria hold for unenhanced CT only
    assert steatosis.state == "uncertain" and steatosis.knowledge == ("ct-hepatic-steatosis",)
    assert "unenhanced CT only" in steatosis.criteria
    texts = [f["text"] for f in result.raw["facts"]]
    assert texts[0].startswith("Volume of 3 slices of 512 x 512 pixels, 1 mm apart")
    assert result.raw["key_slices"][0]["reason"] == "largest extent of Liver"


def test_a_synthetic_chest_gives_its_lung_volume_and_laa_950(engine, tmp_path):
    hu, meta = synthetic_chest(laa_fraction=0.08, seed=3)
    paths = write_series(tmp_path / "chest", hu, spacing=meta["spacing"], body_part="CHEST",
                         series_description="CHEST NC")
    result = engine.run(study_of(paths, tmp_path))
    by = {m.name: m for m in result.measurements}
    assert by["laa_950"].value == pytest.approx(100 * meta["laa_fraction"], abs=1.0)
    assert by["lung_volume"].value == pytest.approx(meta["lung_volume_ml"], rel=0.03)
    (emphysema,) = [f for f in result.findings if "LAA-950" in f.label]
    # 2.5 mm slices: the densitometry threshold was validated on thin sections
    assert emphysema.state == "uncertain"
    assert emphysema.knowledge == ("ct-emphysema-quantification",)
    (region,) = result.regions
    assert region.kind == "mask3d" and region.shape == hu.shape
    assert set(np.unique(read_mask(region.mask_path))) <= {0, 1, 2}
    assert result.raw["phase"]["phase"] == "unenhanced"


def test_a_tilted_series_is_refused_with_the_reason(engine, tmp_path):
    hu, meta = synthetic_chest(seed=1)
    paths = write_series(tmp_path / "tilt", hu, spacing=meta["spacing"], tilt_deg=12.0,
                         body_part="CHEST")
    result = engine.run(study_of(paths, tmp_path))
    assert result.measurements == [] and result.findings == []
    assert any("gantry-tilt" in w and "12" in w for w in result.warnings)
    assert "gantry tilt" in result.raw["facts"][0]["text"]


def test_a_region_sent_with_a_question_is_measured(engine, tmp_path):
    hu = np.full((6, 48, 40), 20.0, dtype=np.float32)
    hu[3, 10:20, 8:30] = 300.0
    paths = write_series(tmp_path / "box", hu, spacing=(2.0, 0.7, 0.7))
    uid = str(pydicom.dcmread(paths[3], stop_before_pixels=True).SOPInstanceUID)
    result = engine.run(study_of(paths, tmp_path, Prompt("What is the attenuation here?",
                                                         instance_uid=uid,
                                                         box=(8.0, 10.0, 22.0, 10.0))))
    by = {m.name: m for m in result.measurements}
    assert by["region_mean"].value == pytest.approx(300.0, abs=0.5)
    assert by["region_area"].value == pytest.approx(220 * 0.7 * 0.7)
    (sentence,) = result.text[0].sentences
    assert "mean 300.0 HU" in sentence.text and "m:region_mean" in sentence.measurements
