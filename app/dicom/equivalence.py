"""Whether two encodings of one SOP Instance hold the same data set.

A sender may re-encode an instance in transit: C-STORE in Explicit VR Little Endian, STOW-RS in
Implicit VR, another File Meta Information or preamble, sequences with defined instead of
undefined lengths. The store (:mod:`app.dicom.store`) keeps the first copy of a SOP Instance UID;
when a second copy's bytes differ, this module decides whether it is the same instance after all.

The rule (:func:`same_data_set`):

* the preamble, the File Meta Information (group 0002), group lengths (gggg,0000) and Data Set
  Trailing Padding (FFFC,FFFC) carry no content (PS3.10 7.1, PS3.5 7.2 and 7.5) and are not
  compared;
* every other element must be in both, with the same decoded value; sequences item by item.
  Values are compared as pydicom decodes them; where the two files give an element different
  VRs (a private element read as UN from Implicit VR, an ``OB or OW`` / ``US or SS`` element
  resolved differently) the values are compared as their Implicit VR Little Endian encoding,
  which does not depend on the VR written;
* pixel data: native pixel data of the same byte order is compared byte for byte; otherwise
  (a compressed transfer syntax on either side, or native data of the other byte order) the
  decoded pixel arrays are compared, which needs a decoder for each compressed syntax involved.
  Without one, or when either side does not decode, the two are different.

Anything that cannot be read counts as different: the caller then refuses the second copy, as
it did before this rule existed. The module only reads files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

log = logging.getLogger("medgate.dicom.equivalence")

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
TRAILING_PADDING = 0xFFFCFFFC


def _significant(ds: Dataset, top: bool) -> dict[int, DataElement]:
    out: dict[int, DataElement] = {}
    for tag in ds.keys():
        if tag.group == 0x0002 or tag.element == 0x0000 or tag == TRAILING_PADDING:
            continue
        if top and tag in PIXEL_TAGS:
            continue
        out[int(tag)] = ds[tag]
    return out


def _encoded(elem: DataElement) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_data_element(fp, elem)
    return fp.getvalue()


def _same_value(a: DataElement, b: DataElement) -> bool:
    if a.VR == b.VR:
        try:
            if a.value == b.value:
                return True
        except Exception:  # noqa: BLE001 - values that do not compare: try their encoding
            pass
    try:
        return _encoded(a) == _encoded(b)
    except Exception:  # noqa: BLE001 - a value pydicom cannot write is not shown to be equal
        return False


def _same_elements(a: Dataset, b: Dataset, top: bool = False) -> bool:
    ea, eb = _significant(a, top), _significant(b, top)
    if ea.keys() != eb.keys():
        return False
    for tag, x in ea.items():
        y = eb[tag]
        if x.VR == "SQ" and y.VR == "SQ":
            items_a, items_b = list(x.value or []), list(y.value or [])
            if len(items_a) != len(items_b) or not all(
                    _same_elements(i, j) for i, j in zip(items_a, items_b, strict=True)):
                return False
        elif not _same_value(x, y):
            return False
    return True


def _same_pixels(a: Dataset, b: Dataset) -> bool:
    ts_a, ts_b = a.file_meta.TransferSyntaxUID, b.file_meta.TransferSyntaxUID
    for tag in PIXEL_TAGS:
        if (tag in a) != (tag in b):
            return False
        if tag not in a:
            continue
        va, vb = a[tag].value, b[tag].value
        native = not ts_a.is_encapsulated and not ts_b.is_encapsulated
        if native and ts_a.is_little_endian == ts_b.is_little_endian:
            if va != vb:
                return False
            continue
        if ts_a == ts_b and va == vb:
            continue  # the same encapsulated bytes
        try:
            if not np.array_equal(a.pixel_array, b.pixel_array):
                return False
        except Exception as exc:  # noqa: BLE001 - no decoder, or data that does not decode
            log.info("pixel data of %s in %s and in %s not compared (%s): treated as "
                     "different", a.get("SOPInstanceUID", "?"), ts_a.name, ts_b.name, exc)
            return False
    return True


def same_data_set(first: Path, second: Path) -> bool:
    """Whether the Part 10 files ``first`` and ``second`` hold the same data set (see the
    module docstring for the rule)."""
    try:
        a = pydicom.dcmread(first)
        b = pydicom.dcmread(second)
        return _same_elements(a, b, top=True) and _same_pixels(a, b)
    except Exception as exc:  # noqa: BLE001 - unreadable counts as different
        log.info("data sets of %s and %s not compared (%s): treated as different", first,
                 second, exc)
        return False


__all__ = ["same_data_set"]
