"""Tissue detection, Macenko stain vectors, tile quality and the tile grid on the real
CMU-1-Small-Region SVS (Aperio H&E, skin, 0.499 µm/px)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from models.pathology.slide import open_slide
from models.pathology.stain import (
    RUIFROK_E,
    RUIFROK_H,
    StainVectors,
    assess_tiles,
    macenko,
    read_tile,
    separate,
    slide_stain_vectors,
    tile_grid,
    tile_quality,
)
from models.pathology.tissue import detect_tissue
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def svs():
    with open_slide(shared_file("pathology/CMU-1-Small-Region.svs")) as slide:
        yield slide


@pytest.fixture(scope="module")
def tissue(svs):
    return detect_tissue(svs)


@pytest.fixture(scope="module")
def vectors(svs, tissue):
    return slide_stain_vectors(svs, tissue)


@pytest.fixture(scope="module")
def tissue_tiles(svs, tissue):
    return [read_tile(svs, r) for r in tile_grid(svs, tissue, max_tiles=12)]


def test_tissue_area_on_svs(tissue):
    # measured: 0.534 mm² of a 1.640 mm² slide (32.6 %), thumbnail 138x185 at ~8.0 µm/px
    slide_mm2 = 2220 * 2967 * 0.499**2 / 1e6
    assert tissue.mask.shape == (185, 138) and tissue.mask.dtype == bool
    assert tissue.thumb_mpp == pytest.approx((8.0, 8.0), rel=0.01)
    assert 0.45 < tissue.area_mm2 < 0.65 < slide_mm2
    assert 0.25 < tissue.fraction < 0.40
    assert tissue.area_mm2 == pytest.approx(tissue.fraction * slide_mm2, rel=0.01)
    assert tissue.threshold > 0.1  # Otsu, well above the floor: the slide is bimodal
    assert tissue.notes == []
    # the top-left corner is glass, the lower middle tissue
    assert tissue.fraction_in(0, 0, 400, 400) == 0.0
    assert tissue.fraction_in(900, 2400, 1300, 2800) > 0.9


def test_tissue_at_another_size_agrees(svs, tissue):
    other = detect_tissue(svs, max_side=512)
    assert other.area_mm2 == pytest.approx(tissue.area_mm2, rel=0.1)


def test_tissue_without_mpp(tmp_path):
    img = np.full((600, 800, 3), 240, np.uint8)
    img[100:400, 200:500] = (180, 90, 160)  # a purple square: 300x300 px, 18.75 % of the slide
    tifffile.imwrite(tmp_path / "nompp.tif", img, tile=(128, 128), photometric="rgb")
    with open_slide(tmp_path / "nompp.tif") as slide:
        res = detect_tissue(slide)
    assert res.area_mm2 is None and res.thumb_mpp is None
    assert any("no mpp" in n for n in res.notes)
    assert res.fraction == pytest.approx(300 * 300 / (600 * 800), rel=0.05)


def test_stain_vectors_on_svs(vectors):
    # measured: H [0.690, 0.640, 0.338], E [0.172, 0.879, 0.445]; cosines to Ruifrok 0.996 and
    # 0.932. H is the direction that is best defined (nuclei); Macenko's E picks up blue OD
    # from the purple-tinged dermis, so its tolerance is wider.
    assert vectors.method == "macenko" and vectors.n_pixels > 100_000
    assert np.linalg.norm(vectors.h) == pytest.approx(1) and np.linalg.norm(vectors.e) == (
        pytest.approx(1))
    assert float(vectors.h @ RUIFROK_H) > 0.98
    assert float(vectors.e @ RUIFROK_E) > 0.90
    assert vectors.h[0] > vectors.e[0]  # H absorbs red, E hardly
    assert np.argmax(vectors.e) == 1  # E absorbs green most: pink
    assert all(c > 0 for c in vectors.max_conc)


def test_macenko_mask_and_fallback(tissue_tiles):
    tile = tissue_tiles[0]
    mask = np.zeros(tile.shape[:2], bool)
    mask[:, :112] = True
    a = macenko(tile, mask)
    b = macenko(tile[:, :112].reshape(-1, 3))
    assert np.allclose(a.h, b.h) and np.allclose(a.e, b.e)
    white = macenko(np.full((64, 64, 3), 250, np.uint8))
    assert white.method == "ruifrok" and "non-transparent" in white.notes[0]
    assert np.allclose(white.h, RUIFROK_H)


def test_separate_recovers_known_concentrations():
    rng = np.random.default_rng(1)
    ch = rng.uniform(0, 1.5, (32, 32)).astype(np.float32)
    ce = rng.uniform(0, 1.0, (32, 32)).astype(np.float32)
    vec = StainVectors(RUIFROK_H, RUIFROK_E)
    od = ch[..., None] * RUIFROK_H + ce[..., None] * RUIFROK_E
    rgb = np.clip(np.round(255 * np.exp(-od) - 1), 0, 255).astype(np.uint8)
    h, e = separate(rgb, vec)
    assert h.shape == (32, 32) and h.dtype == np.float32
    assert np.abs(h - ch).max() < 0.05 and np.abs(e - ce).max() < 0.05


def test_tile_quality_flags(tissue_tiles, vectors):
    tile = tissue_tiles[0]
    q = tile_quality(tile, vectors)
    assert q["flags"] == [] and q["tissue_fraction"] > 0.5
    assert q["h_mean"] > 0.1 and q["e_mean"] > 0.2
    blurred = ndi.gaussian_filter(tile.astype(np.float32), (2, 2, 0)).round().astype(np.uint8)
    qb = tile_quality(blurred, vectors)
    assert "blurred" in qb["flags"] and qb["laplacian_var"] < q["laplacian_var"] / 10
    white = tile_quality(np.full_like(tile, 245), vectors)
    assert white["flags"] == ["background"] and white["tissue_fraction"] == 0.0
    # a washed-out stain: a tenth of the optical density, still coloured enough to be tissue
    od = -np.log((tile.astype(np.float32) + 1) / 255)
    faded = np.clip(255 * np.exp(-od / 10) - 1, 0, 255).astype(np.uint8)
    qf = tile_quality(faded, vectors)
    assert qf["tissue_fraction"] > 0.1
    assert {"faint", "pale"} <= set(qf["flags"]), qf


def test_assess_tiles_relative_to_the_slide(tissue_tiles, vectors):
    blurred = [ndi.gaussian_filter(t.astype(np.float32), (1.5, 1.5, 0)).round().astype(np.uint8)
               for t in tissue_tiles[:3]]
    white = [np.full_like(tissue_tiles[0], 245)]
    quals, ref = assess_tiles(tissue_tiles + blurred + white, vectors)
    assert ref is not None and ref.n_tiles == len(tissue_tiles) + 3
    flags = [q["flags"] for q in quals]
    assert all(f == [] for f in flags[:len(tissue_tiles)])
    assert all(f == ["blurred"] for f in flags[len(tissue_tiles):-1])
    assert flags[-1] == ["background"]
    assert quals[0]["thresholds"]["relative"] is True


def test_tile_grid_on_svs(svs, tissue):
    refs = tile_grid(svs, tissue, max_tiles=None)
    # measured: 41 of the 117 whole 224-px tiles are at least half tissue
    assert 30 <= len(refs) <= 55
    assert all(r.level == 0 and r.factor == 1.0 and r.size == 224 for r in refs)
    assert all(r.tissue_fraction >= 0.5 for r in refs)
    assert refs[0].mpp == pytest.approx(0.499)
    capped = tile_grid(svs, tissue, max_tiles=8)
    assert len(capped) == 8 and set(capped) <= set(refs)
    # spread: the sample spans most of the tissue's extent, unlike the first 8 in raster order
    ys = [r.y for r in capped]
    assert max(ys) - min(ys) > 0.6 * (max(r.y for r in refs) - min(r.y for r in refs))
    assert read_tile(svs, capped[0]).shape == (224, 224, 3)


def test_tile_grid_resamples_from_the_finer_level(tmp_path):
    rng = np.random.default_rng(0)
    base = np.clip(rng.normal((200, 120, 180), 10, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "p.tif") as tw:
        for k, kw in ((1, {"subifds": 1}), (2, {"subfiletype": 1})):
            tw.write(base[::k, ::k], tile=(256, 256), photometric="rgb",
                     resolution=(1e4 / 0.25 / k, 1e4 / 0.25 / k), resolutionunit="CENTIMETER",
                     **kw)
    with open_slide(tmp_path / "p.tif") as slide:
        tissue = detect_tissue(slide)  # all purple: all tissue
        refs = tile_grid(slide, tissue, target_mpp=0.7, size=100, max_tiles=None)
        assert refs and all(r.level == 1 and r.factor == pytest.approx(1.4) for r in refs)
        assert refs[0].w == 140 and refs[0].mpp == pytest.approx(0.7)
        assert read_tile(slide, refs[0]).shape == (100, 100, 3)
