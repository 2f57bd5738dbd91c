"""MedRegA's region grammar: ``<ref>object</ref><box>[[x1, y1, x2, y2], ...]</box>``.

Source: xmed-lab/MedRegA, ``demo_data/data_file.jsonl`` at commit dfdb0db. A box is the top-left
x, top-left y, bottom-right x and bottom-right y as integers 0..999 relative to the image; the
boxes of one object share one ``<box>``, separated by ", ".

Conversion (a MedGate choice: the authors' code gives none). With W the image width (H the
height for y), a pixel coordinate x becomes the grid value ``g = round(x / W * 999)``, rounded
to the nearest integer with halves up and clamped to 0..999, and a grid value goes back to
``x = g / 999 * W``. So 0 is the left/top edge of the image and 999 the right/bottom edge; a
pixel coordinate comes back within half a grid step (W / 1998 px) of where it was.

MedGate boxes are (x, y, width, height) in pixels (``models.base.Region``); grid boxes are
(x1, y1, x2, y2). ``parse_answer`` never raises: what it cannot read becomes a warning.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass

from models.base import ContractError, Region

GRID_MAX = 999
_EPS = 1e-6  # pixels a box may stick out of the image by float error

GridBox = tuple[int, int, int, int]


class BoxError(ContractError):
    """A box or a reference that cannot be converted or written."""


# --- conversion ---------------------------------------------------------------------------


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise BoxError(f"image {name} must be a positive integer, not {v!r}")


def _check_grid(box: Sequence[int]) -> GridBox:
    if isinstance(box, (str, bytes)) or len(box) != 4:
        raise BoxError(f"a grid box is (x1, y1, x2, y2), not {box!r}")
    for v in box:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v <= GRID_MAX:
            raise BoxError(f"grid box {tuple(box)!r}: coordinates must be integers "
                           f"0..{GRID_MAX}")
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise BoxError(f"grid box {tuple(box)!r}: needs x1 <= x2 and y1 <= y2")
    return x1, y1, x2, y2


def _to_grid_value(v: float, size: int) -> int:
    return min(GRID_MAX, max(0, math.floor(v / size * GRID_MAX + 0.5)))


def to_grid(box_px: tuple[float, float, float, float], width: int, height: int) -> GridBox:
    """A pixel box (x, y, width, height) of a ``width`` x ``height`` image as a grid box
    (x1, y1, x2, y2) of integers 0..999."""
    _check_size(width, height)
    try:
        x, y, w, h = (float(v) for v in box_px)
    except (TypeError, ValueError) as exc:
        raise BoxError(f"a pixel box is (x, y, width, height), not {box_px!r}") from exc
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise BoxError(f"pixel box {box_px!r} has a non-finite value")
    if w < 0 or h < 0:
        raise BoxError(f"pixel box {box_px!r} has a negative size")
    if x < -_EPS or y < -_EPS or x + w > width + _EPS or y + h > height + _EPS:
        raise BoxError(f"pixel box {box_px!r} lies outside the {width} x {height} image")
    return (_to_grid_value(x, width), _to_grid_value(y, height),
            _to_grid_value(x + w, width), _to_grid_value(y + h, height))


def to_pixels(grid_box: GridBox, width: int, height: int) -> tuple[float, float, float, float]:
    """A grid box (x1, y1, x2, y2) as a pixel box (x, y, width, height)."""
    _check_size(width, height)
    x1, y1, x2, y2 = _check_grid(grid_box)
    px1, py1 = x1 / GRID_MAX * width, y1 / GRID_MAX * height
    px2, py2 = x2 / GRID_MAX * width, y2 / GRID_MAX * height
    return px1, py1, px2 - px1, py2 - py1


# --- rendering ----------------------------------------------------------------------------


def render_ref(ref: str) -> str:
    """``<ref>{ref}</ref>``."""
    if not isinstance(ref, str) or not ref.strip():
        raise BoxError(f"a reference needs text, not {ref!r}")
    if "<" in ref or ">" in ref:
        raise BoxError(f"reference {ref!r} must not contain '<' or '>'")
    return f"<ref>{ref}</ref>"


def render_box(ref: str, boxes: Sequence[GridBox]) -> str:
    """``<ref>{ref}</ref><box>[[x1, y1, x2, y2], [...]]</box>`` as the demo data writes it."""
    head = render_ref(ref)
    if isinstance(boxes, (str, bytes)) or not boxes:
        raise BoxError(f"reference {ref!r} needs at least one grid box")
    items = ", ".join("[" + ", ".join(str(v) for v in _check_grid(b)) + "]" for b in boxes)
    return f"{head}<box>[{items}]</box>"


# --- parsing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundedSpan:
    """One ``<ref>…</ref><box>…</box>`` span: its reference text, its good boxes and the
    character offsets of the whole span in the answer."""

    ref: str
    boxes: tuple[GridBox, ...]
    start: int
    end: int


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer read: the original ``text``, ``plain`` (tags removed, a ref span reads as its
    reference text), the grounded ``spans`` and a warning per malformed piece."""

    text: str
    plain: str
    spans: tuple[GroundedSpan, ...]
    warnings: tuple[str, ...]


# Every pattern below is linear: fixed tags, or one character class repeated.
_TAG = re.compile(r"</?(?:ref|box)>")
_WS = re.compile(r"\s*")
_GROUP = re.compile(r"\[([^\[\]]*)\]")
_SEP = re.compile(r"[,，]")
_INT = re.compile(r"[+-]?[0-9]{1,6}")
_DEBRIS = re.compile(r"[\[\]0-9\s,，.+-]*")  # what an unclosed box list is made of
_SKELETON = re.compile(r"[\[\]\s,，]*")
_MAX_WARNINGS = 50  # garbage can hold a malformed tag every few characters
_PUNCT = set(",.;:!?)]}，。：；！？、）】」")


def _short(s: str, n: int = 12) -> str:
    return s if len(s) <= n else s[:n] + "…"


def _read_boxes(text: str, lo: int, hi: int, at: int, warnings: list[str]) -> list[GridBox]:
    """The good boxes of the box list text[lo:hi] (the ``<box>`` tag is at ``at``); a warning
    for each bad one and for text that is not part of the list."""
    groups = list(_GROUP.finditer(text, lo, hi))
    if not groups:
        warnings.append(f"box at {at}: no [x1, y1, x2, y2] list")
        return []
    edges = [lo] + [e for g in groups for e in (g.start(), g.end())] + [hi]
    gaps = list(zip(edges[::2], edges[1::2], strict=True))
    for a, b in gaps:
        stop = _SKELETON.match(text, a, b).end()
        if stop < b:
            warnings.append(f"box at {at}: unexpected text {_short(text[stop:b])!r}")
            break
    good: list[GridBox] = []
    for g in groups:
        p = g.start()
        tokens = [t.strip() for t in _SEP.split(g.group(1))]
        if tokens == [""]:
            tokens = []
        if len(tokens) != 4:
            n = len(tokens)
            warnings.append(f"box at {p}: {n} number{'' if n == 1 else 's'}, not 4")
            continue
        bad = next((t for t in tokens if not _INT.fullmatch(t)), None)
        if bad is not None:
            digits = bad.lstrip("+-")
            if digits.isascii() and digits.isdigit():  # too many digits to be a coordinate
                warnings.append(f"box at {p}: coordinate {_short(bad)} outside 0..{GRID_MAX}")
            else:
                warnings.append(f"box at {p}: {_short(bad)!r} is not an integer")
            continue
        values = [int(t) for t in tokens]
        out = next((v for v in values if not 0 <= v <= GRID_MAX), None)
        if out is not None:
            warnings.append(f"box at {p}: coordinate {out} outside 0..{GRID_MAX}")
            continue
        x1, y1, x2, y2 = values
        if x2 < x1:
            warnings.append(f"box at {p}: x2 < x1")
        elif y2 < y1:
            warnings.append(f"box at {p}: y2 < y1")
        else:
            good.append((x1, y1, x2, y2))
    return good


class _Plain:
    """The answer's text with tags cut out; whitespace is tidied only at a cut."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.cut_pending = False

    def cut(self) -> None:
        self.cut_pending = True

    def add(self, s: str) -> None:
        if self.cut_pending:
            rest = s.lstrip()
            if rest[:1] in _PUNCT and rest:  # "lung <box>…</box>, left" -> "lung, left"
                if self.parts:
                    self.parts[-1] = self.parts[-1].rstrip()
                s = rest
            elif not self.parts or self.parts[-1][-1:].isspace():
                s = rest  # no doubled space, none at the start
            if not s:
                return  # the cut stays pending for what comes next
            self.cut_pending = False
        if s:
            self.parts.append(s)

    def text(self) -> str:
        if self.cut_pending and self.parts:
            self.parts[-1] = self.parts[-1].rstrip()
        return "".join(self.parts)


def parse_answer(text: str) -> ParsedAnswer:
    """Read the grounded spans of a model answer. Never raises: malformed spans become
    warnings naming the problem and its character offset, and are left out of ``spans``."""
    if not isinstance(text, str):
        return ParsedAnswer("", "", (), (f"answer is not a string ({type(text).__name__})",))
    tags = [(m.start(), m.group()) for m in _TAG.finditer(text)]

    def tag(k: int) -> tuple[int, str]:
        return tags[k] if k < len(tags) else (-1, "")

    plain, spans, warnings = _Plain(), [], []
    i = pos = 0
    while i < len(tags):
        start, name = tags[i]
        plain.add(text[pos:start])
        plain.cut()
        if name == "<ref>":
            close_at, close = tag(i + 1)
            if close != "</ref>":
                warnings.append(f"unclosed <ref> at {start}")
                pos, i = start + len(name), i + 1
                continue
            ref_raw, ref_end = text[start + 5:close_at], close_at + 6
            box_at, box = tag(i + 2)
            if box != "<box>" or box_at != _WS.match(text, ref_end).end():
                warnings.append(f"ref at {start} has no box")
                plain.add(ref_raw)
                plain.cut()
                pos, i = ref_end, i + 2
                continue
            end_at, end = tag(i + 3)
            plain.add(ref_raw)
            plain.cut()
            if end != "</box>":
                warnings.append(f"unclosed <box> at {box_at}")
                pos, i = _DEBRIS.match(text, box_at + 5).end(), i + 3
                continue
            boxes = _read_boxes(text, box_at + 5, end_at, box_at, warnings)
            ref = ref_raw.strip()
            if not ref:
                warnings.append(f"ref at {start} is empty")
            elif boxes:
                spans.append(GroundedSpan(ref, tuple(boxes), start, end_at + 6))
            pos, i = end_at + 6, i + 4
        elif name == "<box>":
            warnings.append(f"box at {start} without a ref")
            end_at, end = tag(i + 1)
            if end == "</box>":
                pos, i = end_at + 6, i + 2
            else:
                warnings.append(f"unclosed <box> at {start}")
                pos, i = _DEBRIS.match(text, start + 5).end(), i + 1
        else:
            warnings.append(f"stray {name} at {start}")
            pos, i = start + len(name), i + 1
    plain.add(text[pos:])
    if len(warnings) > _MAX_WARNINGS:
        more = len(warnings) - _MAX_WARNINGS
        warnings[_MAX_WARNINGS:] = [f"and {more} more warnings"]
    return ParsedAnswer(text, plain.text(), tuple(spans), tuple(warnings))


# --- regions ------------------------------------------------------------------------------


def spans_to_regions(spans: Sequence[GroundedSpan], width: int, height: int, instance_uid: str,
                     frame: int | None = None, id_prefix: str = "medrega") -> list[Region]:
    """One box ``Region`` per box of the spans, on ``instance_uid`` (and ``frame``), labelled
    with the span's reference text; ids ``{id_prefix}:1``, ``{id_prefix}:2``, ... over all
    boxes."""
    if not isinstance(instance_uid, str) or not instance_uid.strip():
        raise BoxError("regions must name the instance they lie on")
    regions: list[Region] = []
    for span in spans:
        for box in span.boxes:
            regions.append(Region(id=f"{id_prefix}:{len(regions) + 1}", kind="box",
                                  instance_uid=instance_uid, frame=frame,
                                  box=to_pixels(box, width, height), label=span.ref))
    return regions
