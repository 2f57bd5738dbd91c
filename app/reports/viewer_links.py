"""Links from a report to its images in the viewer (OHIF under /viewer): the study, and for a
finding with a region, the series, instance and frame the region lies on."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from app.config import get_settings


def _viewer_url(params: dict[str, str]) -> str:
    """OHIF's viewer route with ``params``: absolute from MEDGATE_PUBLIC_URL when set, else
    relative."""
    base = (get_settings().public_url or "").rstrip("/")
    return f"{base}/viewer/viewer?{urlencode(params)}"


def study_url(study_uid: str) -> str:
    """The viewer on this study."""
    return _viewer_url({"StudyInstanceUIDs": study_uid})


def _region_of(finding: dict[str, Any], regions: dict[str, dict[str, Any]]
               ) -> dict[str, Any] | None:
    where = finding.get("where") or {}
    for ref in [where.get("region_id"), *(finding.get("evidence") or [])]:
        if ref in regions:
            return regions[ref]
    return None


def finding_target(study_uid: str, finding: dict[str, Any],
                   regions: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Where to open the viewer for a finding that rests on a region; None without one or
    when the region names no instance (a slide region, say)."""
    region = _region_of(finding, regions)
    if region is None:
        return None
    where = finding.get("where") or {}
    series = region.get("series_uid") or where.get("series_uid")
    instance = region.get("instance_uid") or where.get("instance_uid")
    slices = region.get("slice_uids") or []
    if not instance and slices:  # a mask over a series: its first slice the finding names
        first = (where.get("slices") or [0])[0]
        instance = slices[first] if 0 <= first < len(slices) else slices[0]
    if not instance:
        return None
    frame = region.get("frame") or where.get("frame")
    params = {"StudyInstanceUIDs": study_uid}
    if series:
        params["initialSeriesInstanceUID"] = series
    params["initialSOPInstanceUID"] = instance
    return {"region": region.get("id"), "series_uid": series, "instance_uid": instance,
            "frame": frame, "url": _viewer_url(params)}
