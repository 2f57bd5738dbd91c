"""The ``ct-quant`` engine: a CT study's series assembled into volumes and measured, with no
learned weights, every number saying where it was measured.

- **Volumes** (``models.ct.volume``): each CT series sorted along its slice normal; a series
  that is not one volume (a gap, duplicated positions, gantry tilt, mixed orientation, ...) is
  split where it is legitimately several, else refused with its reason in the result (a
  technique sentence and a warning), never guessed at.
- **Segments that arrive with the study** (DICOM SEG, ``models.ct.segments``): volume and HU
  statistics of each segment; liver and spleen give the liver attenuation, the liver-minus-
  spleen difference and hepatic steatosis by ``ct-hepatic-steatosis``; a vertebral body gives
  its trabecular attenuation and low bone attenuation by ``ct-low-bone-attenuation``; aorta and
  portal vein give the contrast phase (``ct-contrast-phases``), else the headers do.
- **Lungs** (``models.ct.lung``), on chest CT: threshold-and-connected-components lung
  segmentation (outside air and airways excluded), lung volumes and the emphysema index
  LAA-950 by ``ct-emphysema-quantification``.
- **A region sent with a question** (``StudyInput.prompt``, a box or a drawn mask on one slice):
  its area and HU statistics, as the answer.
- **Key slices** for the CT assistant: each segment's largest extent, the lungs', else evenly
  spaced slices (``raw["key_slices"]``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.base import (
    OWN_SCHEME,
    Code,
    ContractError,
    EngineResult,
    Finding,
    GeneratedSentence,
    InputError,
    Measurement,
    ModelInfo,
    ModelSpec,
    Region,
    StudyInput,
    TextSection,
    Where,
)

FAMILY = "ct-quant"
VERSION = "1.0.0"
CHEST = re.compile(r"\b(chest|thorax|thoracic|lungs?|pulmonary)\b", re.I)
EMPHYSEMA_LAA_PERCENT = 5.0  # ct-emphysema-quantification: "above about 5%" defines emphysema
THIN_SLICE_MM = 1.25  # the densitometry thresholds were validated on thin sections
# segment stats stated in the report (the rest stay in the measurements)
REPORTED_STATS = ("volume", "mean", "sd")
STEATOSIS = Code("SCT", "197321007", "Steatosis of liver")
LOW_BONE = Code(OWN_SCHEME, "ct-low-bone-attenuation", "Low vertebral bone attenuation")
EMPHYSEMA = Code("SCT", "87433001", "Pulmonary emphysema")
STATE = {"present": "present", "absent": "absent", "indeterminate": "uncertain"}


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


class _Out:
    """Measurements, findings, facts and regions of one run."""

    def __init__(self) -> None:
        self.measurements: list[Measurement] = []
        self.findings: list[Finding] = []
        self.facts: list[dict[str, Any]] = []
        self.regions: list[Region] = []
        self.warnings: list[str] = []
        self.quantities: list[dict[str, Any]] = []

    def quantity(self, q: Any, name: str | None = None, region_id: str | None = None) -> str:
        """Add a ``models.ct.quantify.Quantity`` as a measurement; its id."""
        where = q.where.get("liver", q.where) if "slices" not in q.where else q.where
        slices = where.get("slices")
        unit = "1" if q.unit == "{ratio}" else q.unit
        m = Measurement(name or _slug(q.name), float(q.value), unit,
                        where=Where(series_uid=where.get("series_uid"),
                                    slices=tuple(slices) if slices else None,
                                    region_id=region_id or _slug(str(where.get("region", "")))
                                    or None))
        if any(x.id == m.id for x in self.measurements):
            return m.id
        self.measurements.append(m)
        self.quantities.append({"id": m.id, "name": q.name, "value": q.value, "unit": q.unit,
                                "where": {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in q.where.items()
                                          if not isinstance(v, dict)},
                                "method": q.method, "source": q.source,
                                "notes": list(getattr(q, "notes", []) or [])})
        return m.id


class CtQuantEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("measure", "ask")
    domains: ClassVar[tuple[str, ...]] = ("ct",)

    def __init__(self, spec: ModelSpec) -> None:
        if spec.family != FAMILY:
            raise ContractError(f"spec is for {spec.family!r}, not {FAMILY!r}")
        if spec.variant != "builtin":
            raise ContractError("ct-quant is rule-based: it has only the 'builtin' variant")
        self.spec = spec

    def load(self) -> None:
        return None

    # -- volumes -----------------------------------------------------------------------------
    def _volumes(self, study: StudyInput, out: _Out) -> list[Any]:
        from models.ct.volume import assemble_all

        volumes = []
        ct = [s for s in study.series if s.modality == "CT"]
        if not ct:
            raise InputError("the study has no CT series to measure")
        for series in ct:
            found, errors = assemble_all([(i.path, i.sop_instance_uid)
                                          for i in series.instances])
            volumes += found
            for err in errors:
                if err.reason in ("localizer",):
                    continue
                out.warnings.append(f"series {series.series_uid}: not measured "
                                    f"({err.reason}): {err.message}")
                out.facts.append({"text": f"A CT series was not assembled into a volume "
                                          f"({err.reason.replace('-', ' ')}): {err.message}",
                                  "acquisition": {"series_uid": series.series_uid,
                                                  "refused": err.reason}})
        return volumes

    @staticmethod
    def _technique(volume: Any, out: _Out) -> None:
        dz, dy, dx = volume.spacing
        n = volume.shape[0]
        coverage = dz * (n - 1) + (volume.slice_thickness or dz)
        thick = (f", {volume.slice_thickness:g} mm thick" if volume.slice_thickness else "")
        out.facts.append({
            "text": f"Volume of {n} slices of {volume.shape[1]} x {volume.shape[2]} pixels, "
                    f"{dz:.3g} mm apart along the slice normal{thick}, covering {coverage:.0f} "
                    f"mm; voxels {dx:.3g} x {dy:.3g} x {dz:.3g} mm.",
            "acquisition": {"series_uid": volume.series_uid, "slices": n,
                            "spacing_mm": [round(v, 4) for v in volume.spacing]}})

    # -- segments ----------------------------------------------------------------------------
    def _segments(self, study: StudyInput, volumes: list[Any], out: _Out,
                  headers: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Masks of the SEGs that reference a volume; per segment its statistics; the role
        findings. Returns (phase, key slices)."""
        from models.ct import quantify
        from models.ct.segments import masks_from_seg

        keys: list[dict[str, Any]] = []
        phase: dict[str, Any] | None = None
        segs = [i for s in study.series if s.modality == "SEG" for i in s.instances]
        for inst in segs:
            masks, volume = None, None
            reasons = []
            for v in volumes:
                try:
                    masks, volume = masks_from_seg(inst.path, v), v
                    break
                except ValueError as exc:
                    reasons.append(str(exc))
            if masks is None:
                out.warnings.append(f"segmentation {inst.sop_instance_uid} was not used: "
                                    f"{reasons[0] if reasons else 'no volume to place it on'}")
                continue
            for key, info in masks.segments.items():
                mask = masks[key]
                if not np.any(mask):
                    continue
                # an organ the phrasing table knows is stated by its key measurements; any
                # other segment (a lesion, say) becomes a finding carrying its numbers
                name = info.role or _slug(info.label or info.meaning or key)
                ids = [out.quantity(q, f"{name}_{q.name.rsplit(' ', 1)[-1]}", name)
                       for q in quantify.mask_stats(volume, mask, name)]
                if info.role is None:
                    reported = [i for i in ids if i.rsplit("_", 1)[-1] in REPORTED_STATS]
                    out.findings.append(Finding(
                        Code(OWN_SCHEME, f"ct-segment:{name}", f"{info.label} segment"),
                        f"{info.label or info.meaning} (segmentation received with the study)",
                        evidence=tuple(reported),
                        where=Where(series_uid=volume.series_uid, region_id=name),
                        criteria=f"segment {info.number} of SEG {inst.sop_instance_uid}"))
                keys.append(_key_slice(volume, mask, f"largest extent of {info.label}"))
            vessels = {r: masks.role_mask(r) for r in ("aorta", "portal_vein")}
            vessels = {r: m for r, m in vessels.items() if m is not None and m.any()}
            phase = quantify.contrast_phase(volume, vessels or None, headers)
            self._liver(volume, masks, phase, out)
            self._bone(volume, masks, phase, headers, out)
        return phase or quantify.contrast_phase(volumes[0], None, headers), keys

    @staticmethod
    def _liver(volume: Any, masks: Any, phase: dict[str, Any], out: _Out) -> None:
        from models.ct import quantify

        liver = masks.role_mask("liver")
        if liver is None or not liver.any():
            return
        spleen = masks.role_mask("spleen")
        quantities, cls = quantify.liver_spleen(
            volume, liver, spleen if spleen is not None and spleen.any() else None, phase=phase)
        ids = [out.quantity(q) for q in quantities]
        out.findings.append(Finding(
            STEATOSIS, "Hepatic steatosis", state=STATE[cls["state"]], evidence=tuple(ids),
            knowledge=(cls["knowledge"],), abnormal=cls["state"] == "present",
            where=Where(series_uid=volume.series_uid, region_id="liver"),
            criteria="; ".join([cls["criteria"], *cls["met"], *cls["notes"]])))

    @staticmethod
    def _bone(volume: Any, masks: Any, phase: dict[str, Any], headers: dict[str, Any],
              out: _Out) -> None:
        from models.ct import quantify

        for key, info in masks.segments.items():
            if info.role != "vertebra" or not np.any(masks[key]):
                continue
            level = re.search(r"\b([CTL]\d{1,2})\b", f"{info.label} {info.meaning}")
            kvp = headers.get("KVP")
            try:
                q, cls = quantify.bone_attenuation(
                    volume, masks[key], level=level.group(1) if level else None, phase=phase,
                    kvp=float(kvp) if kvp not in (None, "") else None)
            except ValueError as exc:
                out.warnings.append(f"{info.label}: bone attenuation not measured: {exc}")
                continue
            name = level.group(1).lower() if level else _slug(info.label)
            mid = out.quantity(q, f"{name}_trabecular_mean", _slug(info.label))
            out.findings.append(Finding(
                LOW_BONE, f"Low bone attenuation of {info.label}", state=STATE[cls["state"]],
                evidence=(mid,), knowledge=(cls["knowledge"],),
                abnormal=cls["state"] == "present",
                where=Where(series_uid=volume.series_uid, region_id=_slug(info.label)),
                criteria="; ".join([cls["criteria"], *cls["notes"]])))

    # -- lungs -------------------------------------------------------------------------------
    def _lungs(self, study: StudyInput, volume: Any, phase: dict[str, Any], out: _Out
               ) -> dict[str, Any] | None:
        from models.ct.lung import laa, perc15, segment_lungs

        try:
            lungs = segment_lungs(volume)
        except ValueError as exc:
            out.warnings.append(f"lungs not segmented: {exc}")
            return None
        region_id = None
        if study.output_dir is not None:
            from models.masks import write_mask

            labels = np.zeros(volume.shape, dtype=np.uint8)
            names: dict[int, str] = {}
            if lungs.right is not None and lungs.left is not None:
                labels[lungs.right], labels[lungs.left] = 1, 2
                names = {1: "right lung", 2: "left lung"}
            else:
                labels[lungs.lung] = 1
                names = {1: "lungs"}
            file = write_mask(Path(study.output_dir), f"lungs-{volume.series_uid[-12:]}",
                              labels, fmt="npz")
            region_id = "lungs"
            out.regions.append(Region(id=region_id, kind="mask3d", mask_path=str(file),
                                      shape=volume.shape, series_uid=volume.series_uid,
                                      slice_uids=volume.slice_uids, labels=names,
                                      label="lungs"))
        for key, q in lungs.volumes.items():
            out.quantity(q, f"{_slug(key)}_volume", region_id)
        index = laa(volume, lungs.lung)
        mid = out.quantity(index, "laa_950", region_id)
        out.quantity(perc15(volume, lungs.lung), "perc15", region_id)
        caveats = list(index.notes) + list(lungs.notes)
        thick = volume.spacing[0] > THIN_SLICE_MM or (volume.slice_thickness or 0) > \
            THIN_SLICE_MM
        enhanced = phase.get("phase") not in ("unenhanced",)
        if index.value > EMPHYSEMA_LAA_PERCENT:
            state = "uncertain" if (thick or enhanced) else "present"
        else:
            state = "uncertain" if (thick or enhanced) else "absent"
        out.findings.append(Finding(
            EMPHYSEMA, "Emphysema by densitometry (LAA-950)", state=state, evidence=(mid,),
            knowledge=(index.source,), abnormal=state == "present",
            where=Where(series_uid=volume.series_uid, region_id=region_id),
            criteria=f"LAA-950 above {EMPHYSEMA_LAA_PERCENT:g}% defines emphysema on thin-"
                     "section unenhanced inspiratory CT" + (f"; {'; '.join(caveats)}"
                                                            if caveats else "")))
        return _key_slice(volume, lungs.lung, "largest extent of the lungs")

    # -- a question about a region -----------------------------------------------------------
    def _answer(self, study: StudyInput, volumes: list[Any], out: _Out) -> list[Any]:
        from models.ct import quantify
        from models.masks import read_mask

        prompt = study.prompt
        for volume in volumes:
            if prompt.instance_uid not in volume.slice_uids:
                continue
            k = [i for i, u in enumerate(volume.slice_uids) if u == prompt.instance_uid]
            if volume.frames:
                k = [i for i in k if volume.frames[i] == (prompt.frame or 1)]
            z = k[0]
            plane = np.zeros(volume.shape[1:], dtype=bool)
            if prompt.box is not None:
                x, y, w, h = prompt.box
                plane[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] \
                    = True
            elif prompt.mask_path is not None:
                drawn = read_mask(prompt.mask_path)
                if drawn.shape != plane.shape:
                    raise InputError(f"the drawn mask is {drawn.shape}, the slice {plane.shape}")
                plane = drawn > 0
            else:
                raise InputError("ct-quant measures a region: send a box or a drawn mask")
            mask = np.zeros(volume.shape, dtype=bool)
            mask[z] = plane
            stats = {q.name.rsplit(" ", 1)[-1]: q for q in quantify.mask_stats(volume, mask,
                                                                                "region")}
            ids = {s: out.quantity(q, f"region_{s}", "region") for s, q in stats.items()}
            area = float(plane.sum()) * volume.spacing[1] * volume.spacing[2]
            out.measurements.append(Measurement(
                "region_area", area, "mm2", where=Where(series_uid=volume.series_uid,
                                                        slices=(z, z), region_id="region",
                                                        instance_uid=prompt.instance_uid)))
            m = stats
            text = (f"The region on slice {z + 1} covers {area:.0f} mm² ({int(plane.sum())} "
                    f"pixels): mean {m['mean'].value:.1f} HU, SD {m['sd'].value:.1f} HU, "
                    f"median {m['median'].value:.1f} HU, 5th-95th percentile "
                    f"{m['p05'].value:.0f} to {m['p95'].value:.0f} HU.")
            return [GeneratedSentence(text, measurements=(
                ids["mean"], ids["sd"], ids["median"], ids["p05"], ids["p95"], "m:region_area"))]
        raise InputError(f"instance {prompt.instance_uid} is not a slice of a CT volume of "
                         "this study")

    # -- engine ------------------------------------------------------------------------------
    def run(self, study: StudyInput) -> EngineResult:
        if study.domain != "ct":
            raise InputError(f"ct-quant measures CT studies, not {study.domain}")
        out = _Out()
        volumes = self._volumes(study, out)
        headers = next((m for m in study.metadata if m.get("Modality") == "CT"), {})
        raw: dict[str, Any] = {"volumes": [], "key_slices": []}
        text: list[TextSection] = []
        if volumes:
            main = max(volumes, key=lambda v: v.shape[0] * v.spacing[0])
            for v in volumes:
                self._technique(v, out)
                raw["volumes"].append({"series_uid": v.series_uid, "shape": list(v.shape),
                                       "spacing": list(v.spacing), "notes": list(v.notes)})
            if study.prompt is not None:
                text = [TextSection("answer", tuple(self._answer(study, volumes, out)))]
            else:
                phase, keys = self._segments(study, volumes, out, headers)
                out.facts.append({"text": _phase_sentence(phase),
                                  "acquisition": {"contrast_phase": phase.get("phase"),
                                                  "phase_basis": phase.get("basis")}})
                raw["phase"] = {k: v for k, v in phase.items() if k != "quantities"}
                described = " ".join(str(headers.get(k) or "") for k in (
                    "BodyPartExamined", "StudyDescription", "SeriesDescription"))
                if CHEST.search(described):
                    lung_key = self._lungs(study, main, phase, out)
                    if lung_key:
                        keys.append(lung_key)
                if not keys:
                    keys = [_key_slice_at(main, z, "evenly spaced")
                            for z in np.linspace(0, main.shape[0] - 1, 5)[1:-1].round()
                            .astype(int)]
                raw["key_slices"] = _with_paths(keys, study)
        raw["quantities"] = out.quantities
        raw["facts"] = out.facts
        return EngineResult(model=ModelInfo(FAMILY, self.spec.version), trained=True,
                            findings=out.findings, measurements=out.measurements,
                            regions=out.regions, text=text, warnings=out.warnings, raw=raw)


def _phase_sentence(phase: dict[str, Any]) -> str:
    name = str(phase.get("phase") or "unknown").replace("_", " ")
    basis = phase.get("basis") or "none"
    if name == "unknown":
        return "Contrast phase: not determined (no vessel segment, and the headers do not say)."
    source = "attenuation of the vessels" if basis == "attenuation" else "headers"
    return f"Contrast phase: {name} (from the {source})."


def _key_slice_at(volume: Any, z: int, reason: str) -> dict[str, Any]:
    z = int(z)
    key = {"sop_instance_uid": volume.slice_uids[z], "slice_index": z, "reason": reason,
           "series_uid": volume.series_uid}
    if volume.frames:
        key["frame"] = int(volume.frames[z])
    return key


def _key_slice(volume: Any, mask: np.ndarray, reason: str) -> dict[str, Any]:
    return _key_slice_at(volume, int(np.argmax(mask.sum(axis=(1, 2)))), reason)


def _with_paths(keys: list[dict[str, Any]], study: StudyInput) -> list[dict[str, Any]]:
    paths = {i.sop_instance_uid: str(i.path) for s in study.series for i in s.instances}
    seen, out = set(), []
    for k in keys:
        ident = (k["sop_instance_uid"], k.get("frame"))
        if ident in seen or k["sop_instance_uid"] not in paths:
            continue
        seen.add(ident)
        out.append({**k, "path": paths[k["sop_instance_uid"]]})
    return out
