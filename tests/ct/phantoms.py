"""CT phantoms written as real DICOM: classic CT Image Storage series (one file per slice) and
Enhanced CT Image Storage (one multi-frame file), plus analytic shapes with known volumes and a
synthetic chest with a known low-attenuation-area (LAA) fraction.

Array conventions: every ``hu`` array is (slices, rows, columns) = (z, y, x) and every
``spacing`` is (slice, row, column) mm, like ``models.ct.volume.Volume``. Shape centres
(``centre_mm``) are (z, y, x) mm measured from the centre of voxel (0, 0, 0).

Stored values are ``round((hu - intercept) / slope)``; ``quantise`` gives the HU a reader must get
back exactly. Pixel Representation is 1 (signed) when a stored value is negative, else 0.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

STUDY_DATE = "20240115"
SUPERSAMPLE = 4  # sub-voxel samples per axis for partial-volume shapes (4 x 4 x 4 per voxel)


# --------------------------------------------------------------------------- DICOM writing


def _ds(value: float) -> str:
    """A Decimal String (at most 16 characters) for a float."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{value:.8g}"
    return text


def _stored(hu: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int]:
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    lo, hi = float(stored.min()), float(stored.max())
    if lo < 0:
        if lo < -32768 or hi > 32767:
            raise ValueError(f"stored values {lo}..{hi} do not fit int16 (slope {slope})")
        return stored.astype(np.int16), 1
    if hi > 65535:
        raise ValueError(f"stored values {lo}..{hi} do not fit uint16 (slope {slope})")
    return stored.astype(np.uint16), 0


def quantise(hu: np.ndarray, slope: float = 1.0, intercept: float = -1024.0) -> np.ndarray:
    """The HU a reader recovers from ``write_series(hu, slope=..., intercept=...)``, float32."""
    stored, _ = _stored(hu, slope, intercept)
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def _geometry(orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = np.asarray(orientation, dtype=np.float64)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    return row, col, np.cross(row, col)


def _base(patient_id: str, study_uid: str, series_uid: str, frame_uid: str, sop_class: str,
          sop_uid: str, *, series_description: str, body_part: str, rows: int, columns: int,
          pixel_repr: int, acquisition: int | None) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = "Phantom^CT", patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyTime = STUDY_DATE, "090000"
    ds.SeriesDate, ds.SeriesTime = STUDY_DATE, "090100"
    ds.ContentDate, ds.ContentTime = STUDY_DATE, "090200"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.StudyDescription = "CT phantom"
    ds.Modality, ds.SeriesNumber, ds.PatientPosition = "CT", 1, "HFS"
    if series_description:
        ds.SeriesDescription = series_description
    if body_part:
        ds.BodyPartExamined = body_part
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.Manufacturer = "MedGate test phantoms"
    ds.AcquisitionNumber = 1 if acquisition is None else int(acquisition)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = pixel_repr
    ds.BurnedInAnnotation = "NO"
    return ds


def _item(**attrs) -> Dataset:
    item = Dataset()
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def _seq(**attrs) -> DicomSequence:
    return DicomSequence([_item(**attrs)])


def write_series(folder: Path, hu: np.ndarray, spacing: Sequence[float] = (2.5, 0.75, 0.75), *,
                 origin: Sequence[float] = (-24.0, -24.0, -50.0),
                 orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), slope: float = 1.0,
                 intercept: float = -1024.0, patient_id: str = "PHANTOM-1",
                 study_uid: str | None = None, series_uid: str | None = None,
                 tilt_deg: float = 0.0, drop: Iterable[int] = (),
                 duplicate: Iterable[int] = (), acquisition: int | None = None,
                 series_description: str = "", body_part: str = "", enhanced: bool = False,
                 frame_uid: str | None = None, temporal_position: int | None = None,
                 per_frame: bool = False) -> list[Path]:
    """Write ``hu`` (z, y, x) as a CT series in ``folder``; the paths come back in slice order.

    Slice k lies at ``origin + k * spacing[0] * normal`` (normal = row cosine x column cosine of
    ``orientation``, the Image Orientation (Patient)); ``tilt_deg`` also shifts it by
    ``k * spacing[0] * tan(tilt)`` along the column cosine (y for axial) and writes Gantry/Detector
    Tilt, like a tilted-gantry acquisition. ``drop`` leaves slice indices out (a gap);
    ``duplicate`` writes those slices a second time with a new SOP Instance UID. ``acquisition``
    is the Acquisition Number (1 when None); ``temporal_position`` adds a Temporal Position
    Identifier. ``enhanced=True`` writes one Enhanced CT Image Storage file instead, with
    Plane Position per frame and the other groups shared (``per_frame=True``: all per frame).
    ``frame_uid`` is the Frame of Reference UID (one per study when None)."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError("hu must be (slices, rows, columns)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_uid or _frame_uid_for(study_uid)
    stored, pixel_repr = _stored(hu, slope, intercept)
    row, col, normal = _geometry(orientation)
    dz, dy, dx = (float(s) for s in spacing)
    shift = math.tan(math.radians(tilt_deg))
    dropped = set(drop)
    repeats = set(duplicate)
    order: list[int] = []
    for k in range(hu.shape[0]):
        if k in dropped:
            continue
        order.append(k)
        if k in repeats:
            order.append(k)

    def position(k: int) -> list[str]:
        p = np.asarray(origin, dtype=np.float64) + k * dz * normal + k * dz * shift * col
        return [_ds(v) for v in p]

    iop = [_ds(v) for v in (*row, *col)]
    common = dict(series_description=series_description, body_part=body_part,
                  rows=int(hu.shape[1]), columns=int(hu.shape[2]), pixel_repr=pixel_repr,
                  acquisition=acquisition)
    if enhanced:
        return [_write_enhanced(folder, stored, order, position, iop, (dz, dy, dx), slope,
                                intercept, tilt_deg, patient_id, study_uid, series_uid,
                                frame_uid, temporal_position, per_frame, common)]
    paths = []
    for n, k in enumerate(order):
        sop_uid = generate_uid()
        ds = _base(patient_id, study_uid, series_uid, frame_uid, CTImageStorage, sop_uid,
                   **common)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionDate, ds.AcquisitionTime = STUDY_DATE, "090030"
        if not body_part:
            ds.Laterality = ""  # 2C: unknown without a body part; absent for an unpaired one
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = position(k)
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.SliceThickness = _ds(dz)
        ds.SpacingBetweenSlices = _ds(dz)
        ds.SliceLocation = _ds(float(np.dot(normal, np.asarray(origin, float))) + k * dz)
        ds.KVP = "120"
        ds.GantryDetectorTilt = _ds(tilt_deg)
        ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
        ds.RescaleType = "HU"
        if temporal_position is not None:
            ds.TemporalPositionIdentifier = int(temporal_position)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"ct{n:04d}_{uuid.uuid4().hex[:8]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_FRAME_UIDS: dict[str, str] = {}


def _frame_uid_for(study_uid: str) -> str:
    return _FRAME_UIDS.setdefault(study_uid, generate_uid())


def _write_enhanced(folder: Path, stored: np.ndarray, order: list[int], position, iop: list[str],
                    spacing: tuple[float, float, float], slope: float, intercept: float,
                    tilt_deg: float, patient_id: str, study_uid: str, series_uid: str,
                    frame_uid: str, temporal_position: int | None, per_frame: bool,
                    common: dict) -> Path:
    """One Enhanced CT Image (PS3.3 A.38) holding the slices of ``order`` as frames."""
    dz, dy, dx = spacing
    sop_uid = generate_uid()
    ds = _base(patient_id, study_uid, series_uid, frame_uid, EnhancedCTImageStorage, sop_uid,
               **common)
    # Enhanced General Equipment (C.7.5.2) and Enhanced CT Image (C.8.15.2)
    ds.ManufacturerModelName, ds.DeviceSerialNumber = "phantom", "0"
    ds.SoftwareVersions = "1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ContentQualification = "RESEARCH"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionDateTime = STUDY_DATE + "090030"
    ds.AcquisitionDuration = 1.0
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    # Multi-frame Dimension (C.7.6.17): one dimension, the in-stack position
    dim_uid = generate_uid()
    ds.DimensionOrganizationSequence = _seq(DimensionOrganizationUID=dim_uid)
    ds.DimensionIndexSequence = DicomSequence([
        _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="In-Stack Position")])

    def measures() -> DicomSequence:
        return _seq(PixelSpacing=[_ds(dy), _ds(dx)], SliceThickness=_ds(dz),
                    SpacingBetweenSlices=_ds(dz))

    def orient() -> DicomSequence:
        return _seq(ImageOrientationPatient=iop)

    def transform() -> DicomSequence:
        return _seq(RescaleIntercept=_ds(intercept), RescaleSlope=_ds(slope), RescaleType="HU")

    def ct_groups(item: Dataset) -> None:
        item.CTImageFrameTypeSequence = _seq(FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                                             PixelPresentation="MONOCHROME",
                                             VolumetricProperties="VOLUME",
                                             VolumeBasedCalculationTechnique="NONE")
        item.CTAcquisitionTypeSequence = _seq(AcquisitionType="SPIRAL",
                                              ConstantVolumeFlag="NO", FluoroscopyFlag="NO")
        # CT Acquisition Details Macro (C.8.15.3): Gantry/Detector Tilt
        item.CTAcquisitionDetailsSequence = _seq(
            DataCollectionDiameter=500.0, GantryDetectorTilt=_ds(tilt_deg),
            TableHeight=100.0, RotationDirection="CW", RevolutionTime=0.5,
            SingleCollimationWidth=0.625, TotalCollimationWidth=40.0)
        item.CTTableDynamicsSequence = _seq(TableSpeed=40.0, TableFeedPerRotation=20.0,
                                            SpiralPitchFactor=1.0)
        item.CTGeometrySequence = _seq(DistanceSourceToDetector=1040.0,
                                       DistanceSourceToDataCollectionCenter=570.0)
        item.CTReconstructionSequence = _seq(ReconstructionAlgorithm="FILTER_BACK_PROJ",
                                             ConvolutionKernel="STANDARD",
                                             ConvolutionKernelGroup="SOFT_TISSUE",
                                             ReconstructionDiameter=dx * stored.shape[2],
                                             ReconstructionPixelSpacing=[dy, dx],
                                             ReconstructionAngle=360.0,
                                             ImageFilter="NONE")
        item.CTExposureSequence = _seq(ExposureTimeInms=500.0, XRayTubeCurrentInmA=200.0,
                                       ExposureInmAs=100.0, ExposureModulationType="NONE")
        item.CTXRayDetailsSequence = _seq(KVP=120.0, FocalSpots=[1.0], FilterType="NONE",
                                          FilterMaterial=["ALUMINUM"])
        item.CTPositionSequence = _seq(TablePosition=0.0, DataCollectionCenterPatient=centre,
                                       ReconstructionTargetCenterPatient=centre)
        item.FrameAnatomySequence = _seq(
            FrameLaterality="U",
            AnatomicRegionSequence=_seq(CodeValue="51185008", CodingSchemeDesignator="SCT",
                                        CodeMeaning="Thorax"))
        item.IrradiationEventIdentificationSequence = _seq(
            IrradiationEventUID=irradiation_uid)
        item.FrameVOILUTSequence = _seq(WindowCenter=40, WindowWidth=400)

    irradiation_uid = generate_uid()
    middle = order[len(order) // 2]
    centre = [float(v) for v in position(middle)]
    shared = Dataset()
    if not per_frame:
        shared.PixelMeasuresSequence = measures()
        shared.PlaneOrientationSequence = orient()
        shared.PixelValueTransformationSequence = transform()
        ct_groups(shared)
    frames = []
    for n, k in enumerate(order):
        item = Dataset()
        content = _item(FrameAcquisitionNumber=int(common["acquisition"] or 1),
                        StackID="1", InStackPositionNumber=n + 1, DimensionIndexValues=[n + 1],
                        FrameAcquisitionDateTime=STUDY_DATE + "090030",
                        FrameReferenceDateTime=STUDY_DATE + "090030",
                        FrameAcquisitionDuration=1.0)
        if temporal_position is not None:
            content.TemporalPositionIndex = int(temporal_position)
        item.FrameContentSequence = DicomSequence([content])
        item.PlanePositionSequence = _seq(ImagePositionPatient=position(k))
        if per_frame:
            item.PixelMeasuresSequence = measures()
            item.PlaneOrientationSequence = orient()
            item.PixelValueTransformationSequence = transform()
            ct_groups(item)
        frames.append(item)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.ascontiguousarray(stored[order]).tobytes()
    path = folder / f"enhanced_{uuid.uuid4().hex[:8]}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- analytic shapes


def _subsample_offsets(spacing: Sequence[float], n: int = SUPERSAMPLE) -> np.ndarray:
    """Sub-voxel sample offsets (n^3, 3) in mm, centred on the voxel centre."""
    f = (np.arange(n) + 0.5) / n - 0.5
    grids = np.meshgrid(*(f * float(s) for s in spacing), indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def _fraction(shape: Sequence[int], spacing: Sequence[float], inside) -> np.ndarray:
    """The fraction of each voxel for which ``inside(z, y, x)`` (mm arrays) holds, sampled on a
    SUPERSAMPLE^3 sub-grid (partial-volume averaging)."""
    axes = [np.arange(n) * float(s) for n, s in zip(shape, spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    out = np.zeros(tuple(shape), dtype=np.float64)
    offsets = _subsample_offsets(spacing)
    for oz, oy, ox in offsets:
        out += inside(z + oz, y + oy, x + ox)
    return out / len(offsets)


def sphere_fraction(shape: Sequence[int], spacing: Sequence[float], centre_mm: Sequence[float],
                    radius_mm: float) -> np.ndarray:
    """The fraction (0..1) of each voxel inside the sphere."""
    cz, cy, cx = (float(c) for c in centre_mm)
    r2 = float(radius_mm) ** 2
    return _fraction(shape, spacing,
                     lambda z, y, x: (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r2)


def cylinder_fraction(shape: Sequence[int], spacing: Sequence[float],
                      centre_mm: Sequence[float], radius_mm: float, length_mm: float,
                      axis: int = 0) -> np.ndarray:
    """The fraction (0..1) of each voxel inside a cylinder whose axis is parallel to array axis
    ``axis`` (0 = slices), centred on ``centre_mm``, ``length_mm`` long with flat ends."""
    c = [float(v) for v in centre_mm]
    r2, half = float(radius_mm) ** 2, float(length_mm) / 2.0

    def inside(*coords):
        d = [coords[i] - c[i] for i in range(3)]
        radial = sum(d[i] ** 2 for i in range(3) if i != axis)
        return (radial <= r2) & (np.abs(d[axis]) <= half)

    return _fraction(shape, spacing, inside)


def sphere(shape: Sequence[int], spacing: Sequence[float], centre_mm: Sequence[float],
           radius_mm: float, inside_hu: float, outside_hu: float) -> np.ndarray:
    """A partial-volume sphere (float32 HU): each voxel mixes inside and outside HU by the
    fraction of it inside, so sum(fraction) * voxel volume approximates 4/3 pi r^3."""
    f = sphere_fraction(shape, spacing, centre_mm, radius_mm)
    return (outside_hu + f * (inside_hu - outside_hu)).astype(np.float32)


def cylinder(shape: Sequence[int], spacing: Sequence[float], centre_mm: Sequence[float],
             radius_mm: float, length_mm: float, inside_hu: float, outside_hu: float,
             axis: int = 0) -> np.ndarray:
    """A partial-volume cylinder (float32 HU) along array axis ``axis``; true volume
    pi r^2 L."""
    f = cylinder_fraction(shape, spacing, centre_mm, radius_mm, length_mm, axis)
    return (outside_hu + f * (inside_hu - outside_hu)).astype(np.float32)


def known_volume_ml(radius_mm: float, length_mm: float | None = None) -> float:
    """The true volume in mL: a sphere (4/3 pi r^3) or, with ``length_mm``, a cylinder
    (pi r^2 L)."""
    if length_mm is None:
        return 4.0 / 3.0 * math.pi * radius_mm ** 3 / 1000.0
    return math.pi * radius_mm ** 2 * length_mm / 1000.0


def fraction_volume_ml(fraction: np.ndarray, spacing: Sequence[float]) -> float:
    """The volume in mL that a partial-volume fraction map stands for (sum x voxel volume)."""
    return float(fraction.sum()) * float(np.prod(spacing)) / 1000.0


# --------------------------------------------------------------------------- synthetic chest

LAA_THRESHOLD_HU = -950.0


def _ellipsoid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Voxels (index space) whose centres lie inside the ellipsoid."""
    idx = np.indices(tuple(shape), dtype=np.float64)
    acc = np.zeros(tuple(shape))
    for i in range(3):
        if math.isinf(radii[i]):
            continue
        acc += ((idx[i] - centre[i]) / radii[i]) ** 2
    return acc <= 1.0


def synthetic_chest(shape: Sequence[int] = (32, 64, 64),
                    spacing: Sequence[float] = (2.5, 0.75, 0.75), laa_fraction: float = 0.1,
                    seed: int = 0) -> tuple[np.ndarray, dict]:
    """A synthetic chest (float32 integer HU, (z, y, x); slice index grows towards the head,
    row index towards posterior, column index towards patient left, as for an axial LPS series).

    Outside air -1000 around a soft-tissue body ellipse (40 +- 10 HU); two lung ellipsoids whose
    voxels are exactly ``round(laa_fraction * n)`` emphysematous (-990..-970 HU) and the rest
    normal lung (-890..-810 HU), so the fraction below -950 HU is known exactly; a trachea
    (-1000 HU air tube) inside the body between and above the lungs, not touching them (a lung
    segmentation must exclude it); a spine (+400 HU) posterior.

    Metadata: ``lung_mask``, ``left_lung_mask``, ``right_lung_mask``, ``trachea_mask``,
    ``body_mask``, ``spine_mask`` (bool arrays), ``laa_fraction`` (true fraction below -950 HU
    in the lung mask), ``laa_voxels``, ``lung_voxels``, ``lung_volume_ml``, ``laa_threshold_hu``,
    ``spacing``."""
    nz, ny, nx = (int(v) for v in shape)
    if min(ny, nx) < 32 or nz < 8:
        raise ValueError("synthetic_chest needs at least 8 slices and 32 x 32 pixels")
    rng = np.random.default_rng(seed)
    hu = np.full((nz, ny, nx), -1000.0)
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    body = np.broadcast_to(_ellipsoid((1, ny, nx), (0, cy, cx),
                                      (math.inf, 0.40 * ny, 0.46 * nx)), (nz, ny, nx)).copy()
    hu[body] = np.rint(40 + rng.uniform(-10, 10, int(body.sum())))

    # lungs: ellipsoids either side of the midline, from slice 1 to 2 slices below the top
    lz_c, lz_r = (nz - 1) / 2.0 - 1.0, max((nz - 4) / 2.0, 2.0)
    ly_c, ly_r, lx_r = cy - 0.02 * ny, 0.27 * ny, 0.14 * nx
    right = _ellipsoid((nz, ny, nx), (lz_c, ly_c, cx - 0.23 * nx), (lz_r, ly_r, lx_r)) & body
    left = _ellipsoid((nz, ny, nx), (lz_c, ly_c, cx + 0.23 * nx), (lz_r, ly_r, lx_r)) & body
    lung = right | left
    lung_idx = np.flatnonzero(lung)
    n_laa = int(round(laa_fraction * lung_idx.size))
    laa = np.zeros(lung_idx.size, dtype=bool)
    laa[rng.choice(lung_idx.size, size=n_laa, replace=False)] = True
    values = np.where(laa, rng.uniform(-990, -970, lung_idx.size),
                      rng.uniform(-890, -810, lung_idx.size))
    hu.reshape(-1)[lung_idx] = np.rint(values)

    # trachea: an air tube in the midline, anterior of centre, from mid-lung to the top slice
    tr = max(0.05 * nx, 1.6)
    tube = _ellipsoid((1, ny, nx), (0, cy - 0.12 * ny, cx), (math.inf, tr, tr))[0]
    trachea = np.zeros((nz, ny, nx), dtype=bool)
    trachea[nz // 2:, tube] = True
    trachea &= body & ~lung
    hu[trachea] = -1000.0

    # spine: a bone disc posterior, the whole length
    sr = max(0.08 * nx, 2.0)
    disc = _ellipsoid((1, ny, nx), (0, cy + 0.28 * ny, cx), (math.inf, sr, sr))[0]
    spine = np.zeros((nz, ny, nx), dtype=bool)
    spine[:, disc] = True
    spine &= body & ~lung
    hu[spine] = np.rint(400 + rng.uniform(-20, 20, int(spine.sum())))

    voxel_ml = float(np.prod(spacing)) / 1000.0
    meta = {
        "lung_mask": lung, "left_lung_mask": left, "right_lung_mask": right,
        "trachea_mask": trachea, "body_mask": body, "spine_mask": spine,
        "laa_voxels": n_laa, "lung_voxels": int(lung_idx.size),
        "laa_fraction": n_laa / lung_idx.size if lung_idx.size else 0.0,
        "lung_volume_ml": lung_idx.size * voxel_ml,
        "laa_threshold_hu": LAA_THRESHOLD_HU, "spacing": tuple(float(s) for s in spacing),
    }
    return hu.astype(np.float32), meta
