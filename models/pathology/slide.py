"""One abstraction over whole-slide images: Aperio SVS and other TIFF slides (through
``tiffslide``) and DICOM VL Whole Slide Microscopy (through ``wsidicom``).

Coordinates are always in the pixels of the level asked for; ``Level.downsample`` maps them to
the base level. Pixels come back as ``uint8`` RGB arrays of shape (h, w, 3).

``Slide.thumbnail`` never reads a whole level into memory: it picks the smallest level that is
still at least as large as the thumbnail, reads it one tile row at a time and area-averages each
band into the output as it goes (so peak memory is about the output plus two tile rows).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DicomRefs",
    "Level",
    "ReadStats",
    "Slide",
    "SlideError",
    "open_slide",
]

VL_WSM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
DEFAULT_TILE = 512  # band height used when a level states no tile size (stripped TIFF)
MPP_LEVEL_TOLERANCE = 0.02  # a level within 2 % of the target mpp counts as "at" the target


class SlideError(ValueError):
    """What was given is not a whole-slide image this module can open, or a bad request."""


@dataclass(frozen=True)
class Level:
    index: int
    width: int
    height: int
    downsample: float  # base pixels per pixel of this level (mean of x and y)
    mpp: tuple[float, float] | None  # microns per pixel (x, y)
    tile_width: int
    tile_height: int
    sop_instance_uids: tuple[str, ...] = ()  # DICOM only: the instance(s) holding this level

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(frozen=True)
class DicomRefs:
    """What an annotation needs to point at the slide it was drawn on."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    container_identifier: str | None
    sop_class_uid: str = VL_WSM_SOP_CLASS
    # every image instance of the pyramid, base level first
    sop_instance_uids: tuple[str, ...] = ()


@dataclass
class ReadStats:
    """Counts of what was read from the file, so callers and tests can see the cost of a call."""

    calls: int = 0
    pixels: int = 0
    largest: int = 0  # the most pixels read by one call
    by_level: dict[int, int] = field(default_factory=dict)  # pixels read per level index

    def add(self, level: int, w: int, h: int) -> None:
        self.calls += 1
        self.pixels += w * h
        self.largest = max(self.largest, w * h)
        self.by_level[level] = self.by_level.get(level, 0) + w * h


def _to_rgb8(arr: np.ndarray, *, bits_stored: int | None = None,
             monochrome1: bool = False) -> np.ndarray:
    """Any (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) array as uint8 RGB."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        bits = bits_stored or (8 * arr.dtype.itemsize)
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr, 0, 255)
        else:
            arr = arr.astype(np.uint32) >> max(0, bits - 8) if bits > 8 else arr
        arr = arr.astype(np.uint8)
    if monochrome1:
        arr = 255 - arr
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] >= 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


class _TiffBackend:
    def __init__(self, path: Path):
        import tiffslide

        class LevelCoords(tiffslide.TiffSlide):
            # tiffslide's documented hook: read_region takes the location in the level's own
            # pixels instead of base-level pixels (no rounding through the downsample).
            def _read_region_loc_transform(self, location, level):  # noqa: ARG002
                return int(location[0]), int(location[1])

        try:
            self.ts = LevelCoords(path)
            props = self.ts.properties  # parsed lazily: errors for odd TIFFs come here
            dims = list(self.ts.level_dimensions)
        except Exception as exc:  # tifffile / tiffslide raise several kinds for non-slides
            if hasattr(self, "ts"):
                self.ts.close()
            raise SlideError(f"{path.name}: TIFF could not be opened as a slide: {exc}") from exc
        axes = props.get("tiffslide.series-axes")
        if axes not in ("YXS", "YX", "CYX"):
            self.ts.close()
            raise SlideError(f"{path.name}: TIFF image axes {axes!r} are not a 2-D slide image")
        self.vendor = props.get("tiffslide.vendor")
        mx, my = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
        self.mpp = (float(mx), float(my or mx)) if mx else None
        if self.mpp is not None and not all(v > 0 and math.isfinite(v) for v in self.mpp):
            self.mpp = None
        self.objective_power = props.get("tiffslide.objective-power")
        base_w, base_h = self.ts.dimensions
        levels = []
        for i, (w, h) in enumerate(dims):
            fx, fy = base_w / w, base_h / h
            tw = props.get(f"tiffslide.level[{i}].tile-width") or DEFAULT_TILE
            th = props.get(f"tiffslide.level[{i}].tile-height") or DEFAULT_TILE
            mpp = (self.mpp[0] * fx, self.mpp[1] * fy) if self.mpp else None
            levels.append(Level(i, int(w), int(h), (fx + fy) / 2, mpp, int(tw), int(th)))
        self.levels = levels

    def read(self, level: Level, x: int, y: int, w: int, h: int) -> np.ndarray:
        arr = self.ts.read_region((x, y), level.index, (w, h), as_array=True, padding=False)
        return _to_rgb8(arr)

    def close(self) -> None:
        self.ts.close()


def _dicom_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
            "ImageType", "FrameOfReferenceUID", "ContainerIdentifier"])
    except Exception as exc:
        raise SlideError(f"{path.name}: not a readable DICOM file: {exc}") from exc


class _DicomBackend:
    def __init__(self, files: list[Path]):
        from wsidicom import WsiDicom

        try:
            self.wsi = WsiDicom.open(files)
        except Exception as exc:
            raise SlideError(f"wsidicom could not open the slide from {len(files)} file(s): "
                             f"{exc}") from exc
        self.vendor = None
        self.objective_power = None
        pyramid = self.wsi.levels
        wsi_levels = sorted(pyramid.levels, key=lambda lv: -lv.size.width * lv.size.height)
        base = wsi_levels[0]
        levels: list[Level] = []
        for i, lv in enumerate(wsi_levels):
            fx, fy = base.size.width / lv.size.width, base.size.height / lv.size.height
            mpp = self._level_mpp(lv)
            uids = tuple(str(ds.instance_uid) for ds in lv.datasets)
            levels.append(Level(i, int(lv.size.width), int(lv.size.height), (fx + fy) / 2, mpp,
                                int(lv.tile_size.width), int(lv.tile_size.height), uids))
        self.levels = levels
        self._wsi_levels = [int(lv.level) for lv in wsi_levels]  # wsidicom's pyramid index
        self.mpp = levels[0].mpp
        ds0 = base.datasets[0].as_dataset()
        self.photometric = str(ds0.get("PhotometricInterpretation", "RGB"))
        self.bits_stored = int(ds0.get("BitsStored", 8))
        uids = self.wsi.uids
        self.refs = DicomRefs(
            study_instance_uid=str(uids.study_instance),
            series_instance_uid=str(uids.series_instance),
            frame_of_reference_uid=str(uids.frame_of_reference) if uids.frame_of_reference
            else None,
            container_identifier=(str(ds0.ContainerIdentifier)
                                  if ds0.get("ContainerIdentifier") else None),
            sop_class_uid=str(ds0.SOPClassUID),
            sop_instance_uids=tuple(u for lv in levels for u in lv.sop_instance_uids),
        )

    @staticmethod
    def _level_mpp(lv) -> tuple[float, float] | None:
        """PixelSpacing of the shared functional groups (mm, row then column) as µm (x, y)."""
        for wds in lv.datasets:
            ds = wds.as_dataset()
            try:
                spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
                row_mm, col_mm = float(spacing[0]), float(spacing[1])
            except (AttributeError, IndexError, TypeError, ValueError):
                continue
            if row_mm > 0 and col_mm > 0:
                return col_mm * 1000.0, row_mm * 1000.0
        mpp = getattr(lv, "mpp", None)  # wsidicom's own reading (it may derive from the size)
        if mpp is not None and mpp.width and mpp.height:
            return float(mpp.width), float(mpp.height)
        return None

    def read(self, level: Level, x: int, y: int, w: int, h: int) -> np.ndarray:
        arr = self.wsi.read_region((x, y), self._wsi_levels[level.index], (w, h), as_array=True)
        return _to_rgb8(arr, bits_stored=self.bits_stored,
                        monochrome1=self.photometric == "MONOCHROME1")

    def close(self) -> None:
        self.wsi.close()


@dataclass
class Slide:
    """An open slide. Use as a context manager or call ``close()``."""

    source: str  # "svs", "tiff" or "dicom"
    paths: tuple[Path, ...]
    levels: list[Level]
    backend: object = field(repr=False)
    vendor: str | None = None
    objective_power: float | None = None
    dicom: DicomRefs | None = None
    stats: ReadStats = field(default_factory=ReadStats)

    # -- geometry --------------------------------------------------------------------------
    @property
    def mpp(self) -> tuple[float, float] | None:
        return self.levels[0].mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.levels[0].width, self.levels[0].height

    def level(self, level: int | Level) -> Level:
        if isinstance(level, Level):
            return level
        if not 0 <= level < len(self.levels):
            raise SlideError(f"level {level} out of range (slide has {len(self.levels)})")
        return self.levels[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose resolution is at least ``target_mpp`` (its mpp <= target,
        within 2 %), so reaching the target means downsampling, never upsampling; level 0 when
        even the base is coarser than the target."""
        if self.mpp is None:
            raise SlideError("slide has no microns-per-pixel calibration")
        best = 0
        for lv in self.levels:  # base first, mpp growing
            if _mean_mpp(lv) <= target_mpp * (1 + MPP_LEVEL_TOLERANCE):
                best = lv.index
        return best

    # -- pixels ----------------------------------------------------------------------------
    def read_region(self, level: int | Level, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) of the region at (x, y) in that level's pixels."""
        lv = self.level(level)
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w <= 0 or h <= 0:
            raise SlideError(f"empty region {w}x{h}")
        if x < 0 or y < 0 or x + w > lv.width or y + h > lv.height:
            raise SlideError(f"region ({x}, {y}, {w}, {h}) outside level {lv.index} "
                             f"({lv.width}x{lv.height})")
        self.stats.add(lv.index, w, h)
        out = self.backend.read(lv, x, y, w, h)  # type: ignore[attr-defined]
        if out.shape != (h, w, 3):
            raise SlideError(f"backend returned {out.shape} for a {w}x{h} region")
        return out

    def tiles(self, level: int | Level, size: int,
              overlap: int = 0) -> Iterator[tuple[int, int, int, int]]:
        """(x, y, w, h) covering the level in raster order; edge tiles are clipped."""
        lv = self.level(level)
        if size <= 0 or not 0 <= overlap < size:
            raise SlideError(f"bad tiling: size {size}, overlap {overlap}")
        step = size - overlap
        for y in range(0, lv.height, step):
            for x in range(0, lv.width, step):
                yield x, y, min(size, lv.width - x), min(size, lv.height - y)
                if x + size >= lv.width:
                    break
            if y + size >= lv.height:
                break

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """RGB thumbnail whose longer side is ``max_side`` (never larger than the base level)
        and its scale: thumbnail pixels per base-level pixel.

        Built from the smallest level still at least as large as the thumbnail, read one tile
        row at a time; each band is area-averaged (PIL box filter on exact fractional source
        boxes, so bands join seamlessly) into the output.
        """
        if max_side <= 0:
            raise SlideError(f"max_side must be positive, got {max_side}")
        bw, bh = self.dimensions
        scale = min(1.0, max_side / max(bw, bh))
        out_w, out_h = max(1, round(bw * scale)), max(1, round(bh * scale))
        src = self.levels[0]
        for lv in self.levels:  # levels run from the base down to the smallest
            if lv.width >= out_w and lv.height >= out_h and lv.width * lv.height < (
                    src.width * src.height):
                src = lv
        return self._downsample_level(src, out_w, out_h), scale

    def _downsample_level(self, lv: Level, out_w: int, out_h: int) -> np.ndarray:
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        fy = lv.height / out_h  # source rows per output row
        band = max(lv.tile_height, 1)
        buf: np.ndarray | None = None
        buf_y0 = 0  # level row of buf[0]
        oy = 0  # next output row to write
        for ty in range(0, lv.height, band):
            strip = self.read_region(lv, 0, ty, lv.width, min(band, lv.height - ty))
            buf = strip if buf is None or len(buf) == 0 else np.concatenate([buf, strip])
            avail = ty + strip.shape[0]
            last = out_h if avail >= lv.height else min(out_h, int(avail / fy + 1e-9))
            if last <= oy:
                continue
            box = (0.0, oy * fy - buf_y0, float(lv.width), min(last * fy, avail) - buf_y0)
            img = Image.fromarray(buf).resize((out_w, last - oy), Image.Resampling.BOX, box=box)
            out[oy:last] = np.asarray(img)
            del img
            oy = last
            cut = min(int(math.floor(oy * fy)) - buf_y0, len(buf))
            buf = buf[cut:].copy() if cut > 0 else buf
            buf_y0 += max(cut, 0)
        return out

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.backend.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mean_mpp(lv: Level) -> float:
    return (lv.mpp[0] + lv.mpp[1]) / 2 if lv.mpp else math.nan


def _kind(path: Path) -> str:
    """'tiff', 'dicom' or a SlideError for anything else."""
    if not path.exists():
        raise SlideError(f"{path}: no such file or folder")
    if path.is_dir():
        return "folder"
    with path.open("rb") as fh:
        head = fh.read(132)
    if head[:4] in TIFF_MAGICS:
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    raise SlideError(f"{path.name}: neither a TIFF nor a DICOM file")


def _dicom_files(paths: Sequence[Path], named: bool) -> list[Path]:
    """The VL Whole Slide Microscopy image instances of one series among ``paths``.

    Files named explicitly must all be such instances; in a folder other DICOM objects (bulk
    annotations, other modalities) and non-DICOM files are passed over.
    """
    images: list[Path] = []
    series: set[str] = set()
    for p in paths:
        ds = _dicom_header(p)
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class != VL_WSM_SOP_CLASS:
            if named:
                name = getattr(ds.get("SOPClassUID"), "name", sop_class) or "no SOP class"
                raise SlideError(f"{p.name}: {name} is not VL Whole Slide Microscopy Image "
                                 "Storage")
            continue
        images.append(p)
        series.add(str(ds.get("SeriesInstanceUID", "")))
    if not images:
        raise SlideError("no VL Whole Slide Microscopy image instance among "
                         f"{len(paths)} file(s)")
    if len(series) > 1:
        raise SlideError(f"the instances belong to {len(series)} series; a slide's levels are "
                         "one series")
    return images


def open_slide(paths: Path | str | Sequence[Path | str]) -> Slide:
    """Open an SVS/TIFF slide (one file), or a DICOM WSM slide (one or more instance files of
    one series, or a folder holding them)."""
    items = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not items:
        raise SlideError("no file given")
    kinds = [_kind(p) for p in items]
    if kinds == ["folder"]:
        folder = items[0]
        files = sorted(p for p in folder.iterdir() if p.is_file())
        dicoms = [p for p in files if _sniff(p) == "dicom"]
        tiffs = [p for p in files if _sniff(p) == "tiff"]
        if dicoms:
            return _open_dicom(_dicom_files(dicoms, named=False))
        if len(tiffs) == 1:
            return _open_tiff(tiffs[0])
        raise SlideError(f"{folder}: holds no DICOM slide instances"
                         + (f" and {len(tiffs)} TIFF files (give one)" if tiffs else ""))
    if "folder" in kinds:
        raise SlideError("give either one folder or files, not both")
    if set(kinds) == {"tiff"}:
        if len(items) > 1:
            raise SlideError(f"{len(items)} TIFF files given; a TIFF slide is one file")
        return _open_tiff(items[0])
    if set(kinds) == {"dicom"}:
        return _open_dicom(_dicom_files(items, named=True))
    raise SlideError("TIFF and DICOM files mixed; a slide is one or the other")


def _sniff(path: Path) -> str | None:
    try:
        return _kind(path)
    except (SlideError, OSError):
        return None


def _open_tiff(path: Path) -> Slide:
    be = _TiffBackend(path)
    source = "svs" if be.vendor == "aperio" else "tiff"
    power = float(be.objective_power) if be.objective_power else None
    return Slide(source=source, paths=(path,), levels=be.levels, backend=be, vendor=be.vendor,
                 objective_power=power)


def _open_dicom(files: list[Path]) -> Slide:
    be = _DicomBackend(files)
    return Slide(source="dicom", paths=tuple(files), levels=be.levels, backend=be,
                 dicom=be.refs)
