"""How ``models/validation/slide-sm/cmu1-region.dcm`` was made (run from the project root):

    PYTHONPATH=. .venv/bin/python -m tests.runtime.make_validation_slide models/validation/slide-sm

A 960 x 960 region (4 x 4 tiles of 240 px, columns 3-6 and rows 5-8 of the tile grid: the skin
section below the centre) of the real Aperio SVS ``CMU-1-Small-Region`` (OpenSlide test data,
CC0 1.0) as a DICOM VL Whole Slide Microscopy image. The header is highdicom's ``sm_image.dcm``
(MIT; itself made from CMU-1) through ``tests.pathology.dicom_slide.make_wsm``; the frames are
the SVS's own JPEG tiles, not decoded and re-encoded: each is the tile's entropy-coded data with
the SVS's shared JPEG tables in front and an Adobe APP14 marker saying "no colour transform"
(the SVS tiles are RGB-coded JPEG, which a DICOM reader would otherwise take for YCbCr). The
slide the engine reads is therefore pixel for pixel the SVS region (``test_validation_cases``
checks this when the shared data is present).

The whole SVS is 1.9 MB; this region is 0.35 MB and is still a slide slide-quant analyses fully
(tissue tiles at 0.5 µm per pixel, Macenko stain vectors, nuclei), which highdicom's 50 x 50
synthetic ``sm_image.dcm`` is not (no tile, no stain estimate).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

TILE = 240  # the SVS's tile size
COLUMNS = (3, 7)  # tile columns [3, 7) and rows [5, 9) of the SVS base level
ROWS = (5, 9)
NAME = "cmu1-region.dcm"
PATIENT_ID = "VAL-SM"  # short: the specimen identifiers derived from it are SH (16 chars)
# APP14 "Adobe", version 100, flags 0, 0, transform 0 (components are RGB, not YCbCr)
ADOBE_RGB = bytes.fromhex("ffee000e") + b"Adobe" + bytes([0, 100, 0, 0, 0, 0, 0])


def svs_tiles(svs: Path) -> tuple[list[bytes], np.ndarray]:
    """The region's JPEG frames (TILED_FULL order) and its pixels as tifffile decodes them."""
    import tifffile

    with tifffile.TiffFile(svs) as tif:
        page = tif.pages[0]
        if (page.tilewidth, page.tilelength) != (TILE, TILE) or int(page.compression) != 7:
            raise ValueError(f"{svs.name}: expected {TILE} px JPEG tiles")
        per_row = -(-page.shape[1] // TILE)
        tables = page.jpegtables  # SOI, DQT, DHT..., EOI
        frames = []
        for r in range(*ROWS):
            for c in range(*COLUMNS):
                i = r * per_row + c
                tif.filehandle.seek(page.dataoffsets[i])
                tile = tif.filehandle.read(page.databytecounts[i])  # SOI, SOF, SOS..., EOI
                frames.append(b"\xff\xd8" + ADOBE_RGB + tables[2:-2] + tile[2:])
        pixels = page.asarray()[ROWS[0] * TILE:ROWS[1] * TILE,
                                COLUMNS[0] * TILE:COLUMNS[1] * TILE]
    return frames, pixels


def make(out: Path, svs: Path) -> Path:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from tests.pathology.dicom_slide import make_wsm

    frames, _ = svs_tiles(svs)
    box = (COLUMNS[0] * TILE, ROWS[0] * TILE, (COLUMNS[1] - COLUMNS[0]) * TILE,
           (ROWS[1] - ROWS[0]) * TILE)
    (native,) = make_wsm(svs, out / "make-tmp", box=box, tile=TILE, patient_id=PATIENT_ID,
                         patient_name="Validation^Slide", study_date="20240101")
    ds = pydicom.dcmread(native)
    assert int(ds.NumberOfFrames) == len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SeriesDescription = "H&E slide region (CMU-1, validation case)"
    target = out / NAME
    ds.save_as(target, enforce_file_format=True)
    native.unlink()
    native.parent.rmdir()
    return target


if __name__ == "__main__":
    from tests.conftest import SHARED_DATA

    print(make(Path(sys.argv[1]), SHARED_DATA / "pathology" / "CMU-1-Small-Region.svs"))
