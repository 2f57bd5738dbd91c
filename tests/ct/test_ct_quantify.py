"""CT quantification (models/ct/quantify.py, lung.py, segments.py): spheres and cylinders of known
HU and volume, a synthetic chest of known lung volume and LAA-950, classifications by the
knowledge entries' thresholds, the contrast phase from headers and attenuation, and DICOM SEG
masks placed on real and phantom CT series."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from scipy import ndimage

from app.dicom.seg import ANATOMICAL_STRUCTURE, SegmentMask, build_segmentation
from models.base import Code
from models.ct.lung import laa, perc15, segment_lungs
from models.ct.quantify import (
    BONE_KB,
    HU,
    PHASE_KB,
    STEATOSIS_KB,
    bone_attenuation,
    by_name,
    contrast_phase,
    liver_spleen,
    mask_stats,
    where,
)
from models.ct.segments import masks_from_seg, segment_role
from models.ct.volume import Volume, assemble
from tests.conftest import ROOT, shared_file
from tests.ct import phantoms

# highdicom warns about the real files' single-component patient names ("JANCT000")
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent")

KB = ROOT / "knowledge_base" / "ct"


def volume_of(hu: np.ndarray, spacing=(1.0, 1.0, 1.0), **kw) -> Volume:
    hu = np.asarray(hu, dtype=np.float32)
    uids = tuple(f"1.2.826.0.1.3680043.10.1.{k}" for k in range(hu.shape[0]))
    return Volume(hu=hu, spacing=tuple(float(s) for s in spacing), origin=(0.0, 0.0, 0.0),
                  direction=np.eye(3), slice_uids=kw.pop("slice_uids", uids),
                  series_uid="1.2.826.0.1.3680043.10.1", **kw)


def box(shape, z, y, x) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return m


# --------------------------------------------------------------------------- shapes


SHAPES = {
    # name: (hu maker, spacing, true volume mL, inside HU, outside HU)
    "sphere r12 (liver-like in fat)": (
        lambda sp: phantoms.sphere((40, 64, 64), sp, (24.4, 25.3, 24.9), 12.0, 60.0, -100.0),
        (1.25, 0.8, 0.8), phantoms.known_volume_ml(12.0), 60.0, -100.0),
    "cylinder along z r10 L30 (vessel in lung)": (
        lambda sp: phantoms.cylinder((48, 64, 64), sp, (24.3, 24.2, 23.9), 10.0, 30.0, 40.0,
                                     -900.0, axis=0),
        (1.0, 0.75, 0.75), phantoms.known_volume_ml(10.0, 30.0), 40.0, -900.0),
    "cylinder along x r10 L36 (bone in water)": (
        lambda sp: phantoms.cylinder((32, 64, 64), sp, (20.4, 24.3, 23.8), 10.0, 36.0, 200.0,
                                     0.0, axis=2),
        (1.25, 0.75, 0.75), phantoms.known_volume_ml(10.0, 36.0), 200.0, 0.0),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_known_shapes_give_volume_within_2pct_and_mean_within_1hu(name):
    make, spacing, true_ml, inside, outside = SHAPES[name]
    rng = np.random.default_rng(7)
    hu = make(spacing) + rng.normal(0.0, 10.0, size=make(spacing).shape).astype(np.float32)
    vol = volume_of(hu, spacing)
    # the segmentation: a threshold half-way between inside and outside HU (the partial-volume
    # voxels more than half inside are in), its largest component (noise specks are not)
    mid = (inside + outside) / 2.0
    mask = hu > mid if inside > outside else hu < mid
    labels, _ = ndimage.label(mask)
    mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    stats = by_name(mask_stats(vol, mask, "shape"))
    volume = stats["shape volume"]
    assert volume.unit == "mL"
    assert abs(volume.value / true_ml - 1.0) < 0.02, (volume.value, true_ml)
    # the mean HU of the object: over its core, the mask less 2 voxels (of the coarsest axis)
    # from its surface, where no voxel is partly outside; the whole mask mixes in the rim
    core = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    core = core > 2 * max(spacing)
    core_mean = by_name(mask_stats(vol, core, "core"))["core mean"]
    assert core_mean.unit == HU
    assert abs(core_mean.value - inside) < 1.0, core_mean.value
    assert abs(stats["shape mean"].value - inside) > abs(core_mean.value - inside)


def test_mask_stats_are_numpy_statistics_with_their_location():
    rng = np.random.default_rng(3)
    hu = rng.normal(40, 15, size=(10, 20, 24)).astype(np.float32)
    vol = volume_of(hu, (2.5, 0.7, 0.8))
    mask = box(hu.shape, (3, 8), (4, 15), (5, 20))
    stats = by_name(mask_stats(vol, mask, "liver"))
    values = hu[mask].astype(np.float64)
    assert stats["liver volume"].value == pytest.approx(mask.sum() * 2.5 * 0.7 * 0.8 / 1000)
    expected = {"mean": values.mean(), "sd": values.std(ddof=1), "median": np.median(values),
                "p05": np.percentile(values, 5), "p25": np.percentile(values, 25),
                "p75": np.percentile(values, 75), "p95": np.percentile(values, 95),
                "min": values.min(), "max": values.max()}
    for stat, value in expected.items():
        q = stats[f"liver {stat}"]
        assert q.value == pytest.approx(value, abs=1e-4), stat
        assert q.unit == "[hnsf'U]" and q.method and q.source
    w = stats["liver mean"].where
    assert w["region"] == "liver" and w["slices"] == (3, 7) and w["voxels"] == mask.sum()
    assert w["first_uid"] == vol.slice_uids[3] and w["last_uid"] == vol.slice_uids[7]
    assert w["series_uid"] == vol.series_uid


def test_mask_stats_refuses_empty_and_misshapen_masks():
    vol = volume_of(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="empty"):
        mask_stats(vol, np.zeros((4, 8, 8), dtype=bool), "liver")
    with pytest.raises(ValueError, match="shape"):
        mask_stats(vol, np.ones((4, 8, 9), dtype=bool), "liver")
    with pytest.raises(ValueError, match="boolean"):
        mask_stats(vol, np.full((4, 8, 8), 0.7), "liver")


def test_where_names_enhanced_ct_frames():
    vol = volume_of(np.zeros((5, 4, 4)), slice_uids=("1.2.3",) * 5, frames=(5, 4, 3, 2, 1))
    w = where(vol, box((5, 4, 4), (1, 3), (0, 2), (0, 2)), "roi")
    assert w["slices"] == (1, 2) and w["frames"] == (4, 3) and w["first_uid"] == "1.2.3"


# --------------------------------------------------------------------------- knowledge thresholds


def kb(entry: str) -> str:
    return (KB / f"{entry}.md").read_text()


def test_thresholds_are_those_the_knowledge_entries_state():
    steatosis = kb(STEATOSIS_KB)
    assert "Liver attenuation < 40 HU" in steatosis
    assert "< 0 HU; < -10 HU is a commonly used stricter cut-off" in steatosis
    assert "liver-to-spleen ratio < 1.0" in steatosis and "about 55-65 HU" in steatosis
    assert "(> 75 HU)" in steatosis
    bone = kb(BONE_KB)
    for text in ("L1 <= 160 HU", "<= 110 HU", "about 135 HU", "<= 100 HU"):
        assert text in bone
    phases = kb(PHASE_KB)
    assert "increase >= 20 HU" in phases and "100-150 HU trigger" in phases
    assert "Portal venous: about 60-80 s" in phases
    assert "unclotted blood about 30-45" in kb("ct-hounsfield-units-windowing")
    emphysema = kb("ct-emphysema-quantification")
    assert "percentage of lung voxels below -950 HU" in emphysema
    assert "thin (<= 1.25 mm) slices" in emphysema


# --------------------------------------------------------------------------- liver / spleen


def abdomen(liver_hu: float, spleen_hu: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    hu = rng.normal(-100, 10, size=(12, 40, 40)).astype(np.float32)  # fat
    liver = box(hu.shape, (2, 10), (5, 30), (3, 20))
    spleen = box(hu.shape, (3, 9), (10, 25), (26, 36))
    hu[liver] = rng.normal(liver_hu, 12, size=int(liver.sum()))
    hu[spleen] = rng.normal(spleen_hu, 12, size=int(spleen.sum()))
    return volume_of(hu, (2.5, 0.8, 0.8)), liver, spleen


@pytest.mark.parametrize("liver_hu, spleen_hu, with_spleen, phase, state", [
    (30, 50, True, "unenhanced", "present"),      # < 40 HU and below the spleen
    (30, 50, False, "unenhanced", "present"),     # < 40 HU alone
    (45, 55, True, "unenhanced", "present"),      # >= 40 HU but 10 HU below the spleen
    (60, 50, True, "unenhanced", "absent"),
    (60, 50, False, "unenhanced", "absent"),      # within the normal 55-65 HU
    (47, 50, False, "unenhanced", "indeterminate"),  # 40-55 HU, no spleen to compare
    (85, 50, True, "unenhanced", "indeterminate"),   # > 75 HU masks steatosis
    (30, 50, True, "portal_venous", "indeterminate"),
    (60, 50, True, "arterial", "indeterminate"),
    (30, 50, True, None, "indeterminate"),        # phase unknown
])
def test_steatosis_uses_the_knowledge_thresholds(liver_hu, spleen_hu, with_spleen, phase, state):
    vol, liver, spleen = abdomen(liver_hu, spleen_hu)
    quantities, result = liver_spleen(vol, liver, spleen if with_spleen else None, phase=phase)
    q = by_name(quantities)
    assert q["liver mean attenuation"].value == pytest.approx(vol.hu[liver].mean(), abs=1e-3)
    assert abs(q["liver mean attenuation"].value - liver_hu) < 1.5
    assert q["liver mean attenuation"].source == STEATOSIS_KB
    if with_spleen:
        diff = q["liver-spleen attenuation difference"]
        assert diff.value == pytest.approx(vol.hu[liver].mean() - vol.hu[spleen].mean(),
                                           abs=1e-3)
        assert diff.where["liver"]["slices"] == (2, 9) and diff.where["spleen"]["slices"] == (3, 8)
        assert q["liver/spleen attenuation ratio"].unit == "{ratio}"
    assert result["state"] == state, result
    assert result["knowledge"] == "ct-hepatic-steatosis"
    assert "40 HU" in result["criteria"] and "unenhanced" in result["criteria"]


def test_steatosis_takes_the_phase_from_contrast_phase():
    vol, liver, spleen = abdomen(30, 50)
    phase = contrast_phase(vol, None, {"SeriesDescription": "ABD PORTAL VENOUS 70s"})
    assert phase["phase"] == "portal_venous"
    _, result = liver_spleen(vol, liver, spleen, phase=phase)
    assert result["state"] == "indeterminate" and result["phase"] == "portal_venous"
    assert any("should be confirmed" in n for n in result["notes"])
    with pytest.raises(ValueError):
        liver_spleen(vol, liver, spleen, phase="venous-ish")


# --------------------------------------------------------------------------- bone


def vertebra(trabecular_hu: float, seed: int = 0):
    """A vertebral body: a 14 mm radius, 24 mm high cylinder with a 1.5 mm cortical shell of
    700 HU around trabecular bone, in 40 HU soft tissue, partial-volume sampled."""
    spacing = (1.25, 0.75, 0.75)
    shape, centre = (32, 56, 56), (20.1, 20.2, 20.3)
    outer = phantoms.cylinder_fraction(shape, spacing, centre, 14.0, 24.0)
    inner = phantoms.cylinder_fraction(shape, spacing, centre, 12.5, 21.0)
    hu = 40.0 + outer * (700.0 - 40.0) + inner * (trabecular_hu - 700.0)
    hu += np.random.default_rng(seed).normal(0, 10, size=shape)
    return volume_of(hu, spacing), outer >= 0.5


@pytest.mark.parametrize("trabecular, state, band", [
    (90, "present", "highly suggestive"),
    (105, "present", "more than 90% specific"),
    (125, "indeterminate", "at or below the balanced 135 HU"),
    (150, "indeterminate", "above the balanced 135 HU"),
    (220, "absent", "sensitive"),
])
def test_bone_attenuation_excludes_the_cortex_and_uses_the_knowledge_thresholds(
        trabecular, state, band):
    vol, mask = vertebra(trabecular)
    q, result = bone_attenuation(vol, mask, phase="unenhanced")
    assert abs(q.value - trabecular) < 2.0, q.value
    assert vol.hu[mask].mean() > trabecular + 50  # the whole mask is dominated by the cortex
    assert q.unit == HU and q.source == BONE_KB and "eroded by 3 mm" in q.method
    assert q.where["region"] == "L1 vertebra trabecular bone"
    assert result["state"] == state and band in result["band"]
    assert result["knowledge"] == "ct-low-bone-attenuation"
    assert "160 HU" in result["criteria"] and "110 HU" in result["criteria"]


def test_bone_attenuation_notes_confounders_and_refuses_a_thin_mask():
    vol, mask = vertebra(120)
    _, result = bone_attenuation(vol, mask, level="L4", phase="portal_venous", kvp=100)
    notes = " ".join(result["notes"])
    assert "10-20 HU" in notes and "100 kVp" in notes and "L1" in notes
    with pytest.raises(ValueError, match="thinner"):
        bone_attenuation(vol, box(vol.shape, (10, 12), (20, 24), (20, 24)))


# --------------------------------------------------------------------------- contrast phase


@pytest.mark.parametrize("headers, phase, contrast", [
    ({"SeriesDescription": "CT ABDOMEN NON-CONTRAST"}, "unenhanced", False),
    ({"SeriesDescription": "Abd/Pel NC 5mm"}, "unenhanced", False),
    ({"SeriesDescription": "Plain chest"}, "unenhanced", False),
    ({"SeriesDescription": "Liver late arterial", "ContrastBolusAgent": "Iohexol"},
     "arterial", True),
    ({"SeriesDescription": "CTA chest"}, "arterial", True),
    ({"SeriesDescription": "PV phase", "ContrastBolusAgent": "Omnipaque"}, "portal_venous",
     True),
    ({"ProtocolName": "Urogram delayed 10 min"}, "delayed", True),
    ({"ContrastBolusAgent": "Iopamidol", "ContrastBolusStartTime": "101000",
      "AcquisitionTime": "101025.5"}, "arterial", True),
    ({"ContrastBolusAgent": "Iopamidol", "ContrastBolusStartTime": "101000",
      "AcquisitionTime": "101110"}, "portal_venous", True),
    ({"ContrastBolusAgent": "Iopamidol", "ContrastBolusStartTime": "235800",
      "AcquisitionTime": "000300"}, "delayed", True),  # 5 minutes, across midnight
    ({"ContrastBolusAgent": "Iopamidol"}, "unknown", True),
    ({"SeriesDescription": "Chest 1.0 B45f"}, "unknown", None),
])
def test_contrast_phase_from_headers(headers, phase, contrast):
    vol = volume_of(np.zeros((2, 4, 4)))
    result = contrast_phase(vol, None, headers)
    assert result["phase"] == phase and result["contrast"] is contrast, result
    assert result["basis"] == ("none" if contrast is None else "headers")
    assert result["knowledge"] == PHASE_KB


def test_contrast_phase_reads_a_pydicom_dataset():
    ds = pydicom.Dataset()
    ds.SeriesDescription = "Abdomen"
    ds.ContrastBolusAgent = "Iohexol"
    ds.ContrastBolusStartTime = "120000"
    ds.AcquisitionTime = "120130"  # 90 s: nephrographic, neither portal venous nor delayed
    result = contrast_phase(volume_of(np.zeros((2, 4, 4))), None, ds)
    assert result["phase"] == "unknown" and result["contrast"] is True
    assert any("nephrographic" in e for e in result["evidence"])


def vessels(aorta_hu: float, portal_hu: float | None):
    rng = np.random.default_rng(1)
    hu = rng.normal(40, 8, size=(6, 30, 30)).astype(np.float32)
    aorta = box(hu.shape, (0, 6), (5, 10), (5, 10))
    hu[aorta] = rng.normal(aorta_hu, 8, size=int(aorta.sum()))
    masks = {"aorta": aorta}
    if portal_hu is not None:
        portal = box(hu.shape, (1, 5), (18, 22), (15, 20))
        hu[portal] = rng.normal(portal_hu, 8, size=int(portal.sum()))
        masks["portal_vein"] = portal
    return volume_of(hu, (2.5, 0.8, 0.8)), masks


@pytest.mark.parametrize("aorta, portal, phase, contrast", [
    (40, 38, "unenhanced", False),
    (50, None, "unenhanced", False),
    (320, 110, "arterial", True),
    (175, 185, "portal_venous", True),
    (125, 118, "delayed", True),
    (220, None, "unknown", True),  # enhanced, phase not told by the aorta alone
])
def test_contrast_phase_from_attenuation(aorta, portal, phase, contrast):
    vol, masks = vessels(aorta, portal)
    result = contrast_phase(vol, masks, None)
    assert result["phase"] == phase and result["contrast"] is contrast, result
    assert result["basis"] == "attenuation"
    q = by_name(result["quantities"])
    assert abs(q["aorta mean attenuation"].value - aorta) < 2
    assert q["aorta mean attenuation"].where["slices"] == (0, 5)


def test_contrast_phase_attenuation_overrides_and_completes_headers():
    vol, masks = vessels(40, 38)
    result = contrast_phase(vol, masks, {"SeriesDescription": "Portal venous"})
    assert result["phase"] == "unenhanced" and result["basis"] == "attenuation"
    assert any("headers suggest portal_venous" in e for e in result["evidence"])
    vol, masks = vessels(260, None)
    result = contrast_phase(vol, masks, {"SeriesDescription": "Arterial"})
    assert result["phase"] == "arterial" and result["basis"] == "headers"
    assert result["contrast"] is True and result["quantities"]


# --------------------------------------------------------------------------- lungs


CHEST_SPACING = (2.5, 0.75, 0.75)


def chest_volume(hu: np.ndarray) -> Volume:
    return volume_of(hu, CHEST_SPACING)


def chest_with_bronchi_and_vessels(seed: int = 3):
    """The phantom chest with main bronchi (-1000 HU tubes) joining the trachea to both lungs,
    so that the airway must be cut away to separate them, and vessels (40 HU) inside each lung,
    which belong to the lung volume."""
    shape = (40, 96, 96)
    hu, meta = phantoms.synthetic_chest(shape, CHEST_SPACING, laa_fraction=0.12, seed=seed)
    nz, _, nx = shape
    lung, trachea, body = meta["lung_mask"], meta["trachea_mask"], meta["body_mask"]
    z0 = nz // 2
    ty, tx = np.argwhere(trachea[z0]).mean(axis=0)
    zz, yy, xx = np.indices(shape)
    bronchi = (((zz - z0) * CHEST_SPACING[0] / CHEST_SPACING[1]) ** 2 + (yy - ty) ** 2 <= 2.5 ** 2)
    bronchi &= (np.abs(xx - tx) <= 0.23 * nx) & body & ~lung
    hu[bronchi] = -1000.0
    for side in ("left_lung_mask", "right_lung_mask"):
        cz, cy, cx = np.argwhere(meta[side]).mean(axis=0)
        vessel = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 1.5 ** 2) & (np.abs(zz - cz) <= 6)
        hu[vessel & meta[side]] = 40.0
    meta = dict(meta, bronchi_mask=bronchi)
    meta["laa_fraction"] = float((hu[lung] < -950).mean())
    return hu, meta


@pytest.mark.parametrize("variant", ["phantom", "with bronchi and vessels"])
def test_segment_lungs_and_laa_on_the_synthetic_chest(variant):
    if variant == "phantom":
        hu, meta = phantoms.synthetic_chest((32, 64, 64), CHEST_SPACING, laa_fraction=0.1,
                                            seed=0)
    else:
        hu, meta = chest_with_bronchi_and_vessels()
    vol = chest_volume(hu)
    result = segment_lungs(vol)
    truth = meta["lung_mask"]
    volume = result.volumes["lung"]
    assert volume.unit == "mL"
    assert abs(volume.value / meta["lung_volume_ml"] - 1.0) < 0.02, (volume.value, result.notes)
    # the airway, the outside air and the body are not lung
    assert not (result.lung & meta["trachea_mask"]).any()
    assert not (result.lung & ~meta["body_mask"]).any()
    assert (result.lung & ~truth).sum() <= 0.01 * truth.sum()
    assert result.airway[meta["trachea_mask"]].mean() > 0.95
    # left (patient +x, higher column index) and right lungs
    assert result.left is not None and result.right is not None
    assert (result.left & meta["left_lung_mask"]).sum() > 0.98 * meta["left_lung_mask"].sum()
    assert (result.right & meta["right_lung_mask"]).sum() > 0.98 * meta["right_lung_mask"].sum()
    assert not (result.left & result.right).any()
    for side in ("left lung", "right lung"):
        assert result.volumes[side].value == pytest.approx(
            meta[side.replace(" ", "_") + "_mask"].sum() * vol.voxel_ml, rel=0.02)
    index = laa(vol, result.lung)
    assert index.name == "LAA-950" and index.unit == "%"
    assert abs(index.value - 100.0 * meta["laa_fraction"]) < 1.0, index.value
    assert index.source == "ct-emphysema-quantification"
    assert index.where["region"] == "lung" and index.where["voxels"] == result.lung.sum()
    assert any("full-inspiration, non-contrast" in n for n in index.notes)
    assert any("2.5 mm" in n for n in index.notes)  # thicker than the 1.25 mm standard


def test_laa_and_perc15_are_the_lung_histogram():
    rng = np.random.default_rng(5)
    hu = rng.uniform(-1000, -700, size=(4, 16, 16)).astype(np.float32)
    vol = volume_of(hu, (1.0, 0.7, 0.7), slice_thickness=1.0)
    lung = box(hu.shape, (0, 4), (2, 14), (2, 14))
    values = hu[lung]
    q = laa(vol, lung)
    assert q.value == pytest.approx(100.0 * (values < -950).mean())
    assert not any("thicker" in n for n in q.notes)
    q856 = laa(vol, lung, threshold=-856)
    assert q856.name == "LAA-856" and "-856 HU is the expiratory" in q856.notes[0]
    p = perc15(vol, lung)
    assert p.value == pytest.approx(np.percentile(values.astype(np.float64), 15))
    with pytest.raises(ValueError):
        laa(vol, np.zeros_like(lung))


def test_segment_lungs_refuses_a_volume_without_inside_air():
    with pytest.raises(ValueError, match="no air"):
        segment_lungs(volume_of(np.full((4, 32, 32), 40.0)))


# --------------------------------------------------------------------------- DICOM SEG


def read_ct_3slice() -> tuple[list[pydicom.Dataset], list[Path]]:
    paths = [shared_file(f"ct/ct-3slice/0{i}.dcm") for i in (1, 2, 3)]
    dss = [pydicom.dcmread(p) for p in paths]
    order = np.argsort([float(ds.ImagePositionPatient[2]) for ds in dss])
    return [dss[i] for i in order], [paths[i] for i in order]


@pytest.fixture(scope="module")
def ct3():
    dss, paths = read_ct_3slice()
    return dss, assemble(paths)


def test_liver_seg_on_the_real_series_matches_a_direct_computation(ct3):
    dss, vol = ct3
    seg_path = shared_file("ct/ct-3slice/liver_seg.dcm")
    masks = masks_from_seg(seg_path, vol)
    assert list(masks) == ["Liver"]
    info = masks.segments["Liver"]
    assert info.meaning == "Liver" and info.role == "liver"
    assert info.property_type == ("SRT", "T-62000", "Liver")  # legacy SNOMED RT code
    liver = masks.role_mask("liver")
    stats = by_name(mask_stats(vol, liver, "liver"))

    # the same by hand: pydicom slices sorted by position, rescaled; the SEG read by highdicom
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                   for ds in dss])
    seg = hd.seg.segread(seg_path)
    uids = [ds.SOPInstanceUID for ds in dss]
    direct = seg.get_pixels_by_source_instance(uids, segment_numbers=[1],
                                               ignore_spatial_locations=True)[..., 0] > 0
    z = [float(ds.ImagePositionPatient[2]) for ds in dss]
    row_mm, col_mm = (float(v) for v in dss[0].PixelSpacing)
    voxel_ml = (z[1] - z[0]) * row_mm * col_mm / 1000.0
    np.testing.assert_array_equal(liver, direct)
    assert stats["liver volume"].value == pytest.approx(direct.sum() * voxel_ml, rel=1e-9)
    assert stats["liver mean"].value == pytest.approx(hu[direct].mean(), abs=1e-6)
    w = stats["liver volume"].where
    assert w["slices"] == (0, 2) and w["first_uid"] == uids[0] and w["last_uid"] == uids[2]
    assert w["voxels"] == int(direct.sum())


def test_seg_of_another_volume_or_frame_of_reference_is_refused(ct3):
    dss, vol = ct3
    seg_path = shared_file("ct/ct-3slice/liver_seg.dcm")
    other = copy.copy(vol)
    other.slice_uids = tuple(generate_uid() for _ in vol.slice_uids)
    other.series_uid = generate_uid()
    with pytest.raises(ValueError, match="does not belong to this volume"):
        masks_from_seg(seg_path, other)
    with pytest.raises(ValueError, match="Frame of Reference"):
        masks_from_seg(seg_path, vol, frame_of_reference_uid=generate_uid())
    # a volume without one of the slices the SEG covers: the mask would be cut
    two = copy.copy(vol)
    two.hu, two.slice_uids = vol.hu[:2], vol.slice_uids[:2]
    with pytest.raises(ValueError, match="does not hold"):
        masks_from_seg(seg_path, two)
    # a frame that does not lie on its referenced slice
    moved = pydicom.dcmread(seg_path)
    pos = moved.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    pos.ImagePositionPatient = [pos.ImagePositionPatient[0], pos.ImagePositionPatient[1],
                                float(pos.ImagePositionPatient[2]) + 5.0]
    with pytest.raises(ValueError, match="does not lie on"):
        masks_from_seg(moved, vol)


def test_seg_on_one_slice_leaves_the_others_empty(ct3):
    dss, vol = ct3
    plane = np.zeros((dss[1].Rows, dss[1].Columns), dtype=np.uint8)
    plane[200:260, 300:380] = 1
    seg = build_segmentation(dss[1], [SegmentMask("spleen", plane, Code("SCT", "78961009",
                                                                          "Spleen"),
                                                  ANATOMICAL_STRUCTURE)],
                             family="tests", version="1")
    masks = masks_from_seg(seg, vol)
    spleen = masks["spleen"]
    assert masks.covered_slices == (1,) and masks.segments["spleen"].role == "spleen"
    np.testing.assert_array_equal(spleen[1], plane.astype(bool))
    assert not spleen[0].any() and not spleen[2].any()
    q = by_name(mask_stats(vol, spleen, "spleen"))["spleen volume"]
    assert q.where["slices"] == (1, 1) and q.where["first_uid"] == dss[1].SOPInstanceUID


SPHERE = ((8, 32, 32), (2.5, 0.75, 0.75), (9.1, 12.2, 11.9), 7.0)


@pytest.mark.parametrize("enhanced", [False, True], ids=["classic", "enhanced"])
def test_fractional_seg_on_a_phantom_series(tmp_path, enhanced):
    shape, spacing, centre, radius = SPHERE
    hu = phantoms.sphere(shape, spacing, centre, radius, 60.0, -100.0)
    paths = phantoms.write_series(tmp_path, hu, spacing, enhanced=enhanced)
    vol = assemble(paths)
    assert bool(vol.frames) is enhanced
    fraction = phantoms.sphere_fraction(shape, spacing, centre, radius).astype(np.float32)
    fraction[:2] = 0.0  # the SEG covers a subset of the slices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=[pydicom.dcmread(p) for p in paths], pixel_array=fraction,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            segment_descriptions=[hd.seg.SegmentDescription(
                segment_number=1, segment_label="Spleen",
                segmented_property_category=codes.SCT.Organ,
                segmented_property_type=codes.SCT.Spleen,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)],
            series_instance_uid=generate_uid(), series_number=2,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="MedGate tests",
            manufacturer_model_name="tests", software_versions="1", device_serial_number="1")
    masks = masks_from_seg(seg, vol)
    stored = np.round(fraction * 255) / 255  # Maximum Fractional Value 255
    np.testing.assert_array_equal(masks["Spleen"], stored >= 0.5)
    assert masks.segments["Spleen"].fractional and masks.covered_slices[0] == 2
    assert not masks["Spleen"][:2].any()
    fractions = masks_from_seg(seg, vol, fractional_threshold=None)["Spleen"]
    assert fractions.dtype == np.float32
    np.testing.assert_allclose(fractions, fraction, atol=1.0 / 255)


@pytest.mark.parametrize("given, role", [
    ("Liver", "liver"), ("liver_mask", "liver"), ("liver lesion", None), ("Liver tumour", None),
    ("spleen", "spleen"), ("vertebrae_L1", "vertebra"), ("L1", "vertebra"),
    ("L1 vertebral body", "vertebra"), ("Aorta", "aorta"), ("thoracic aorta", "aorta"),
    ("portal_vein_and_splenic_vein", "portal_vein"), ("lung_upper_lobe_left", "lung"),
    ("Right lung", "lung"), ("lungs", "lung"), ("pleural effusion", None),
    ("10200004", "liver"), ("SCT:78961009", "spleen"), ("SRT:T-62000", "liver"),
    ("T-62000", "liver"), ("66794005", "vertebra"), ("15825003", "aorta"),
    ("32764006", "portal_vein"), ("39607008", "lung"),
    (Code("SCT", "44029006", "Left lung"), "lung"), (codes.SCT.L1Vertebra, "vertebra"),
    (hd.sr.CodedConcept("T-62000", "SRT", "Liver"), "liver"), (("SCT", "78961009"), "spleen"),
    (codes.SCT.Kidney, None),
])
def test_segment_role(given, role):
    assert segment_role(given) == role
