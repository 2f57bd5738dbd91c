"""Nucleus detection on synthetic tiles with a known count (Beer-Lambert with the Ruifrok
vectors), and on real CMU-1 tiles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from models.pathology.nuclei import MAX_CONTOUR_POINTS, count_nuclei, detect_nuclei
from models.pathology.slide import open_slide
from models.pathology.stain import (
    RUIFROK_E,
    RUIFROK_H,
    macenko,
    ruifrok,
    slide_stain_vectors,
    tile_grid,
)
from models.pathology.tissue import detect_tissue
from tests.conftest import shared_file


def nuclei_tile(n: int, *, size: int = 512, mpp: float = 0.5, pairs: int = 0,
                seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A ``size``² tile at ``mpp`` on a pink (eosin) background with ``n`` dark purple
    elliptical nuclei (semi-axes 2.5-4.5 by 2.0-3.5 µm: 16-50 µm²), ``2 * pairs`` of them as
    touching or overlapping pairs (centres 5.4 µm apart: 0.85 of two mean semi-axes), on eosin
    texture, with optical blur and sensor noise. Returns the
    RGB tile and the nuclei centres (x, y)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    h = np.zeros((size, size), np.float32)
    e = 0.35 + 0.64 * ndi.gaussian_filter(rng.standard_normal((size, size)), 3).astype(
        np.float32)  # eosin texture, sd ~0.06
    placed: list[tuple[float, float, float]] = []  # x, y, radius (px, the larger semi-axis)
    centres: list[tuple[float, float]] = []

    def ellipse(cx: float, cy: float) -> float:
        a = rng.uniform(2.5, 4.5) / mpp  # semi-axes in px
        b = rng.uniform(2.0, 3.5) / mpp
        b = min(a, b)
        th = rng.uniform(0, np.pi)
        r = int(np.ceil(a)) + 1  # work in the nucleus' own window
        y0, y1 = max(0, int(cy) - r), min(size, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(size, int(cx) + r + 1)
        dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        inside = (u * u + v * v) <= 1.0
        h[y0:y1, x0:x1][inside] = rng.uniform(1.0, 1.6)
        centres.append((cx, cy))
        return a

    def free(cx: float, cy: float, r: float) -> bool:
        margin = 5.0 / mpp
        return (margin < cx < size - margin and margin < cy < size - margin
                and all((cx - x) ** 2 + (cy - y) ** 2 > (r + pr + 2.0 / mpp) ** 2
                        for x, y, pr in placed))

    singles = n - 2 * pairs
    tries = 0
    while len(centres) < 2 * pairs and tries < 20000:
        tries += 1
        cx, cy = rng.uniform(0, size, 2)
        r = 9.0 / mpp  # room for the pair
        if free(cx, cy, r):
            ang = rng.uniform(0, np.pi)
            d = 0.85 * 3.2 / mpp  # half the centre distance
            a1 = ellipse(cx - d * np.cos(ang), cy - d * np.sin(ang))
            a2 = ellipse(cx + d * np.cos(ang), cy + d * np.sin(ang))
            placed.append((cx, cy, d + max(a1, a2)))
    while len(centres) < 2 * pairs + singles and tries < 40000:
        tries += 1
        cx, cy = rng.uniform(0, size, 2)
        if free(cx, cy, 4.5 / mpp):
            a = ellipse(cx, cy)
            placed.append((cx, cy, a))
    if len(centres) != n:
        raise RuntimeError(f"placed {len(centres)} of {n} nuclei; make the tile larger")
    h = ndi.gaussian_filter(h, 0.8)  # optical blur at the edges
    h += 0.05 * ndi.gaussian_filter(rng.standard_normal((size, size)), 1).astype(np.float32)
    od = h[..., None] * RUIFROK_H + np.clip(e, 0.1, None)[..., None] * RUIFROK_E
    rgb = 255.0 * np.exp(-od) + rng.normal(0, 4, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), centres


@pytest.mark.parametrize("n, pairs", [(20, 4), (50, 10), (100, 20)])
@pytest.mark.parametrize("seed", [0, 1])
def test_counts_within_ten_percent(n, pairs, seed):
    tile, centres = nuclei_tile(n, pairs=pairs, seed=seed)
    vectors = macenko(tile)
    assert vectors.method == "macenko"
    found = detect_nuclei(tile, vectors, mpp=0.5)
    assert abs(len(found) - n) <= 0.1 * n, (len(found), n)
    # the isolated ones are found where they are (within 3 µm); misses are unsplit pairs
    det = np.array([[d.x, d.y] for d in found])
    dist = np.sqrt(((np.array(centres)[:, None] - det[None]) ** 2).sum(-1)).min(1)
    singles = dist[2 * pairs:]
    assert (singles <= 6).mean() >= 0.95


def test_nucleus_fields():
    tile, _ = nuclei_tile(30, pairs=0, seed=3)
    found = detect_nuclei(tile, ruifrok(), mpp=0.5)
    assert len(found) == 30
    for nuc in found:
        assert 10 <= nuc.area_um2 <= 400
        assert 3 <= len(nuc.contour) <= MAX_CONTOUR_POINTS
        xs, ys = zip(*nuc.contour, strict=True)
        assert min(xs) <= nuc.x <= max(xs) and min(ys) <= nuc.y <= max(ys)
    # drawn nuclei are 2.5-4.5 by 2.0-3.5 µm semi-axes: 16-50 µm² (blurred edges add a little)
    assert 15 < np.median([n.area_um2 for n in found]) < 50


def test_size_filter_is_in_square_microns():
    tile, _ = nuclei_tile(30, pairs=0, seed=3)
    # the same pixels said to be at 0.25 µm/px: every nucleus is a quarter of the area in µm²
    small = detect_nuclei(tile, ruifrok(), mpp=0.25, min_area_um2=10)
    assert len(small) < 30
    assert not detect_nuclei(tile, ruifrok(), mpp=0.5, max_area_um2=12)


def test_no_nuclei_on_empty_tiles():
    rng = np.random.default_rng(0)
    pink = np.clip(rng.normal((230, 160, 200), 4, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert detect_nuclei(pink, ruifrok(), mpp=0.5) == []
    assert detect_nuclei(np.full((256, 256, 3), 245, np.uint8), ruifrok(), mpp=0.5) == []


def test_count_nuclei_on_svs():
    with open_slide(shared_file("pathology/CMU-1-Small-Region.svs")) as slide:
        tissue = detect_tissue(slide)
        vectors = slide_stain_vectors(slide, tissue)
        tiles = tile_grid(slide, tissue, max_tiles=4)
        res = count_nuclei(slide, tissue, vectors, tiles)
    assert res["tiles_used"] == 4 and len(res["per_tile"]) == 4
    assert all(c > 5 for c in res["per_tile"])
    # measured over all 41 tissue tiles: ~1800 nuclei, ~4000 per mm² of tissue, mean 27 µm²
    assert 1000 < res["density_per_mm2"] < 10000
    assert 0 < res["tissue_area_analysed_mm2"] <= 4 * (224 * 0.499) ** 2 / 1e6
    assert 15 < res["mean_area_um2"] < 80
