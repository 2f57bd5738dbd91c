"""Rule-based ECG statements from the measurements of ``models.ecg.measure``.

Every statement is a ``models.base.Finding`` whose ``evidence`` lists the measurement ids it rests
on, whose ``knowledge`` lists the knowledge-base entries that define it, and whose ``criteria``
says, in words and numbers, which rule fired. All thresholds come from ``models.ecg.criteria``.

A statement that depends on something the record does not say (sex or age for a sex-specific
cut-off) or that a co-existing finding makes unreliable (ST criteria with LBBB) is reported with
state "uncertain" and the reason in its criteria, rather than silently dropped or asserted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.base import Finding, Where
from models.ecg import criteria as C
from models.ecg.leads import LIMB_LEADS, PRECORDIAL_LEADS, STANDARD_LEADS
from models.ecg.measure import EcgAnalysis

MIN_RHYTHM_BEATS = 3


@dataclass
class Interpretation:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def codes(self, states: tuple[str, ...] = ("present",)) -> set[str]:
        return {f.code.value for f in self.findings if f.state in states}


# Statements that describe a normal tracing; everything else this module states is abnormal.
NORMAL_CODES = frozenset({"ecg-sinus-rhythm", "ecg-normal-axis", "ecg-normal-ecg"})


def _fmt(x: float, nd: int = 0) -> str:
    return f"{x:.{nd}f}"


class _Rules:
    def __init__(self, a: EcgAnalysis, sex: str | None, age: float | None) -> None:
        self.a = a
        self.v = a.values
        self.pl = a.per_lead
        self.sex = sex if sex in ("M", "F") else None
        self.age = age
        self.out = Interpretation()
        self.beats = tuple(a.median.beats) if a.median else ()

    # -- helpers -----------------------------------------------------------------------------
    def ids(self, *pairs: tuple[str, str | None]) -> tuple[str, ...]:
        out = []
        for name, lead in pairs:
            m = self.a.measurement_id(name, lead)
            if m is not None and m not in out:
                out.append(m)
        return tuple(out)

    def add(self, code: str, label: str, evidence: tuple[str, ...], knowledge: tuple[str, ...],
            criteria: str, state: str = "present", lead: str | None = None,
            beats: tuple[int, ...] | None = None) -> Finding:
        f = Finding(code=code, label=label, state=state, evidence=evidence,
                    knowledge=knowledge, criteria=criteria, abnormal=code not in NORMAL_CODES,
                    where=Where(lead=lead, beats=self.beats if beats is None else beats))
        self.out.findings.append(f)
        return f

    def has(self, name: str) -> bool:
        return name in self.v

    # -- rules -------------------------------------------------------------------------------
    def quality(self) -> int:
        bad = [q for q in self.a.quality if not q.adequate and q.lead in STANDARD_LEADS]
        if bad:
            leads = ", ".join(q.lead for q in bad)
            issues = "; ".join(f"{q.lead}: {', '.join(q.issues)}" for q in bad)
            self.add("ecg-signal-quality", f"Poor signal quality in lead(s) {leads}",
                     self.ids(*[("signal_quality", q.lead) for q in bad]),
                     ("ecg-signal-quality",),
                     f"signal quality score < {C.QUALITY_ADEQUATE_MIN.value:g} ({issues})",
                     beats=())
        return len(bad)

    def rhythm(self) -> str | None:
        v = self.v
        if v.get("beat_count", 0) < MIN_RHYTHM_BEATS or not self.has("heart_rate"):
            return None
        hr = v["heart_rate"]
        p_cons = v.get("p_wave_consistency", 0.0)
        p_amp = v.get("p_amplitude", 0.0)
        irr = v.get("rr_irregularity", 0.0)
        organised_p = (p_amp >= C.P_WAVE_MIN_AMPLITUDE.value
                       and p_cons >= C.P_WAVE_MIN_CONSISTENCY.value)
        p_axis = v.get("p_axis")
        if p_axis is not None:
            sinus_axis = C.SINUS_P_AXIS_MIN.value <= p_axis <= C.SINUS_P_AXIS_MAX.value
            p_text = (f"P axis {p_axis:.0f} deg (sinus: {C.SINUS_P_AXIS_MIN.value:g}.."
                      f"{C.SINUS_P_AXIS_MAX.value:g} deg)")
        else:
            # without leads I and aVF: a sinus P wave is upright in II (AHA2007-I)
            p_ii = self.pl.get("II", {}).get("p_wave")
            sinus_axis = p_ii is not None and p_ii > 0
            p_text = "P wave upright in II" if sinus_axis else "P wave not upright in II"
        rate_ev = self.ids(("heart_rate", None))
        all_beats = tuple(b.index for b in self.a.beats)
        if (not organised_p and p_cons < C.AF_MAX_P_CONSISTENCY.value
                and irr > C.AF_RR_IRREGULARITY.value
                and v["beat_count"] >= C.AF_MIN_BEATS.value):
            response = (" with rapid ventricular response" if hr > C.SINUS_TACHYCARDIA_ABOVE.value
                        else " with slow ventricular response"
                        if hr < C.SINUS_BRADYCARDIA_BELOW.value else "")
            self.add("ecg-atrial-fibrillation", f"Atrial fibrillation{response}",
                     rate_ev + self.ids(("rr_irregularity", None), ("p_wave_consistency", None)),
                     ("ecg-atrial-fibrillation", "ecg-heart-rate"),
                     f"irregularly irregular RR (RMSSD/mean RR {irr:.2f} > "
                     f"{C.AF_RR_IRREGULARITY.value:g}) without organised P waves (P wave before "
                     f"{p_cons:.0%} of beats < {C.AF_MAX_P_CONSISTENCY.value:.0%}); ventricular "
                     f"rate {hr:.0f} bpm", beats=all_beats)
            return "af"
        if organised_p and sinus_axis:
            ev = rate_ev + self.ids(("p_wave_consistency", None), ("p_axis", None),
                                    ("p_amplitude", None))
            base = f"P wave before {p_cons:.0%} of beats, {p_text}"
            if hr < C.SINUS_BRADYCARDIA_BELOW.value:
                self.add("ecg-sinus-bradycardia", "Sinus bradycardia", ev,
                         ("ecg-sinus-bradycardia", "ecg-sinus-rhythm", "ecg-heart-rate"),
                         f"{base}; rate {hr:.0f} bpm < {C.SINUS_BRADYCARDIA_BELOW}",
                         beats=all_beats)
                return "sinus-brady"
            if hr > C.SINUS_TACHYCARDIA_ABOVE.value:
                self.add("ecg-sinus-tachycardia", "Sinus tachycardia", ev,
                         ("ecg-sinus-tachycardia", "ecg-sinus-rhythm", "ecg-heart-rate"),
                         f"{base}; rate {hr:.0f} bpm > {C.SINUS_TACHYCARDIA_ABOVE}",
                         beats=all_beats)
                return "sinus-tachy"
            self.add("ecg-sinus-rhythm", "Sinus rhythm", ev,
                     ("ecg-sinus-rhythm", "ecg-heart-rate"),
                     f"{base}; rate {hr:.0f} bpm within {C.SINUS_BRADYCARDIA_BELOW.value:g}-"
                     f"{C.SINUS_TACHYCARDIA_ABOVE.value:g} bpm", beats=all_beats)
            return "sinus"
        reason = (f"P waves present but not sinus ({p_text})" if organised_p
                  else "no organised P waves and RR not irregular enough for atrial fibrillation")
        self.add("ecg-rhythm-undetermined", "Rhythm not classified; review the tracing",
                 rate_ev + self.ids(("p_wave_consistency", None), ("rr_irregularity", None),
                                    ("p_axis", None)),
                 ("ecg-sinus-rhythm", "ecg-atrial-fibrillation"),
                 f"{reason}; rate {hr:.0f} bpm", state="uncertain", beats=all_beats)
        return "undetermined"

    def av_conduction(self, rhythm: str | None) -> None:
        if rhythm not in ("sinus", "sinus-brady", "sinus-tachy") or not self.has("pr_interval"):
            return
        pr = self.v["pr_interval"]
        if pr > C.FIRST_DEGREE_AV_BLOCK_PR_ABOVE.value:
            self.add("ecg-first-degree-av-block", "First-degree AV block",
                     self.ids(("pr_interval", None)),
                     ("ecg-first-degree-av-block", "ecg-pr-interval"),
                     f"PR {pr:.0f} ms > {C.FIRST_DEGREE_AV_BLOCK_PR_ABOVE} with a P wave before "
                     f"each QRS")

    def ventricular_conduction(self) -> str | None:
        if not self.has("qrs_duration"):
            return None
        qrs = self.v["qrs_duration"]
        if qrs < C.BUNDLE_BRANCH_BLOCK_QRS_MIN.value:
            return None
        pl = self.pl
        ev_qrs = self.ids(("qrs_duration", None))
        if not {"V1", "V6", "I"} <= pl.keys():
            self.add("ecg-ivcd", "Wide QRS; bundle branch morphology not assessable",
                     ev_qrs, ("ecg-ivcd", "ecg-qrs-duration"),
                     f"QRS {qrs:.0f} ms >= {C.IVCD_QRS_MIN}; leads I, V1 and V6 are needed to "
                     "tell RBBB from LBBB", state="uncertain")
            return "ivcd"
        v1, v6, l1 = pl["V1"], pl["V6"], pl["I"]
        terminal_s = max(l1["terminal_s_duration"], v6["terminal_s_duration"])
        if v1["terminal_area"] > 0 and terminal_s > C.RBBB_TERMINAL_S_MIN_MS.value:
            self.add("ecg-rbbb", "Complete right bundle branch block",
                     ev_qrs + self.ids(("terminal_area", "V1"), ("terminal_s_duration", "I"),
                                       ("terminal_s_duration", "V6")),
                     ("ecg-rbbb", "ecg-qrs-duration"),
                     f"QRS {qrs:.0f} ms >= {C.BUNDLE_BRANCH_BLOCK_QRS_MIN}; terminal positive "
                     f"deflection in V1 (terminal 40 ms area {v1['terminal_area']:.1f} mV.ms); "
                     f"terminal S in I/V6 of {terminal_s:.0f} ms > {C.RBBB_TERMINAL_S_MIN_MS}",
                     lead="V1")
            return "rbbb"
        rpt = max(v6["r_peak_time"], pl.get("V5", v6)["r_peak_time"])
        q_lat = max(l1["q_amplitude"], v6["q_amplitude"])
        if (v1["terminal_area"] < 0 and v1["s_amplitude"] > v1["r_amplitude"]
                and q_lat < C.LBBB_MAX_Q_DEPTH.value
                and rpt > C.LBBB_R_PEAK_TIME_V6_MIN.value
                and v6["r_amplitude"] > v6["s_amplitude"]):
            self.add("ecg-lbbb", "Complete left bundle branch block",
                     ev_qrs + self.ids(("terminal_area", "V1"), ("s_amplitude", "V1"),
                                       ("r_amplitude", "V1"), ("q_amplitude", "I"),
                                       ("q_amplitude", "V6"), ("r_peak_time", "V6"),
                                       ("r_peak_time", "V5"), ("r_amplitude", "V6")),
                     ("ecg-lbbb", "ecg-qrs-duration"),
                     f"QRS {qrs:.0f} ms >= {C.BUNDLE_BRANCH_BLOCK_QRS_MIN}; V1 predominantly "
                     f"negative (S {v1['s_amplitude']:.2f} > R {v1['r_amplitude']:.2f} mV); no q "
                     f"in I/V6 (deepest {q_lat:.2f} mV < {C.LBBB_MAX_Q_DEPTH}); R-peak time "
                     f"V5/V6 {rpt:.0f} ms > {C.LBBB_R_PEAK_TIME_V6_MIN}", lead="V6")
            return "lbbb"
        self.add("ecg-ivcd", "Non-specific intraventricular conduction delay", ev_qrs
                 + self.ids(("terminal_area", "V1"), ("terminal_s_duration", "I"),
                            ("terminal_s_duration", "V6")),
                 ("ecg-ivcd", "ecg-qrs-duration"),
                 f"QRS {qrs:.0f} ms >= {C.IVCD_QRS_MIN} without the V1/V6 pattern of complete "
                 "RBBB or LBBB")
        return "ivcd"

    def qt(self, wide: bool) -> bool:
        if not self.has("qtc_bazett"):
            return False
        qtc, qtcf, hr = self.v["qtc_bazett"], self.v["qtc_fridericia"], self.v["heart_rate"]
        thr, sex_known = C.qtc_threshold(self.sex)
        low = C.QTC_PROLONGED_MALE.value
        who = {"M": "men", "F": "women"}.get(self.sex or "", "unknown sex: the women's cut-off")
        ev = self.ids(("qtc_bazett", None), ("qtc_fridericia", None), ("qt_interval", None),
                      ("heart_rate", None))
        kn = ("ecg-prolonged-qt", "ecg-qtc-formulas", "ecg-qt-interval")
        crit = f"QTc (Bazett) {qtc:.0f} ms >= {thr} ({who})"
        if qtc >= thr.value:
            state, notes = "present", []
            if hr > C.QTC_BAZETT_UNRELIABLE_ABOVE.value and qtcf < thr.value:
                state = "uncertain"
                notes.append(f"rate {hr:.0f} bpm > {C.QTC_BAZETT_UNRELIABLE_ABOVE}: Bazett "
                             f"over-corrects and QTc (Fridericia) is {qtcf:.0f} ms")
            if wide:
                state = "uncertain"
                notes.append("QRS >= 120 ms inflates the QT")
            self.add("ecg-prolonged-qt", "Prolonged QT interval", ev, kn,
                     "; ".join([crit] + notes), state=state)
            return True
        if not sex_known and qtc >= low:
            self.add("ecg-prolonged-qt", "Possibly prolonged QT interval (sex not recorded)", ev,
                     kn, f"QTc (Bazett) {qtc:.0f} ms is >= {C.QTC_PROLONGED_MALE} (men) but < "
                     f"{C.QTC_PROLONGED_FEMALE} (women); the record does not state the sex",
                     state="uncertain")
            return True
        return False

    def axis(self) -> str | None:
        if not self.has("qrs_axis"):
            return None
        ax = self.v["qrs_axis"]
        ev = self.ids(("qrs_axis", None))
        if -90.0 <= ax < C.LEFT_AXIS_BELOW.value:
            self.add("ecg-left-axis-deviation", "Left axis deviation", ev,
                     ("ecg-left-axis-deviation",), f"QRS axis {ax:.0f} deg < {C.LEFT_AXIS_BELOW}")
            return "lad"
        if C.RIGHT_AXIS_ABOVE.value < ax <= 180.0:
            self.add("ecg-right-axis-deviation", "Right axis deviation", ev,
                     ("ecg-right-axis-deviation",), f"QRS axis {ax:.0f} deg > {C.RIGHT_AXIS_ABOVE}")
            return "rad"
        if ax < -90.0:
            self.add("ecg-extreme-axis-deviation", "Extreme (northwest) QRS axis", ev,
                     ("ecg-right-axis-deviation", "ecg-left-axis-deviation"),
                     f"QRS axis {ax:.0f} deg between -90 and -180 deg")
            return "extreme"
        self.add("ecg-normal-axis", "Normal QRS axis", ev, ("ecg-normal-axis",),
                 f"QRS axis {ax:.0f} deg within {C.LEFT_AXIS_BELOW.value:g}.."
                 f"{C.RIGHT_AXIS_ABOVE.value:g} deg")
        return "normal"

    def lvh(self, conduction: str | None) -> bool:
        v = self.v
        hits, ev = [], []
        if "sokolow_lyon" in v and v["sokolow_lyon"] >= C.SOKOLOW_LYON_MIN.value:
            hits.append(f"Sokolow-Lyon SV1 + max(RV5, RV6) {v['sokolow_lyon']:.2f} mV >= "
                        f"{C.SOKOLOW_LYON_MIN}")
            ev += self.ids(("sokolow_lyon", None), ("s_amplitude", "V1"), ("r_amplitude", "V5"),
                           ("r_amplitude", "V6"))
        thr, sex_known = C.cornell_threshold(self.sex)
        uncertain = []
        if "cornell_voltage" in v:
            cv = v["cornell_voltage"]
            if cv > thr.value:
                hits.append(f"Cornell RaVL + SV3 {cv:.2f} mV > {thr}")
                ev += self.ids(("cornell_voltage", None), ("r_amplitude", "aVL"),
                               ("s_amplitude", "V3"))
            elif not sex_known and cv > C.CORNELL_FEMALE_ABOVE.value:
                uncertain.append(f"Cornell {cv:.2f} mV > {C.CORNELL_FEMALE_ABOVE} (women) but <= "
                                 f"{C.CORNELL_MALE_ABOVE} (men); sex not recorded")
                ev += self.ids(("cornell_voltage", None))
        if not hits and not uncertain:
            return False
        state = "present" if hits else "uncertain"
        notes = hits + uncertain
        if conduction in ("lbbb",):
            state = "uncertain"
            notes.append("voltage criteria are unreliable with LBBB")
        self.add("ecg-lvh-voltage", "Left ventricular hypertrophy by voltage criteria",
                 tuple(dict.fromkeys(ev)), ("ecg-lvh-voltage",), "; ".join(notes), state=state)
        return True

    def st(self, confounder: str | None) -> list[str]:
        fired: list[str] = []
        pl = self.pl
        for territory, spec in C.ST_TERRITORIES.items():
            met: list[tuple[str, str]] = []
            maybe: list[tuple[str, str]] = []
            for a, b in spec["pairs"]:  # type: ignore[union-attr]
                if a not in pl or b not in pl:
                    continue
                ok, possible = True, True
                for lead in (a, b):
                    applied, sensitive = C.ste_threshold(lead, self.sex, self.age)
                    st = pl[lead]["st_j"]
                    ok &= st >= applied.value
                    possible &= st >= sensitive.value
                if ok:
                    met.append((a, b))
                elif possible:
                    maybe.append((a, b))
            if not met and not maybe:
                continue
            pairs = met or maybe
            leads = sorted({x for p in pairs for x in p}, key=STANDARD_LEADS.index)
            values = ", ".join(f"{lead} {pl[lead]['st_j']:.2f} mV" for lead in leads)
            state = "present" if met else "uncertain"
            notes = [f"ST elevation at the J point in contiguous leads {values} (UDMI4: >= "
                     f"{C.STE_OTHER_LEADS} outside V2-V3; V2-V3 by sex and age)"]
            if not met:
                notes.append("meets the V2-V3 cut-off only for some sex/age groups; sex or age "
                             "not recorded")
            if confounder:
                state = "uncertain"
                notes.append(f"{confounder} makes ST criteria unreliable")
            label = f"ST elevation, {territory} leads ({', '.join(leads)})"
            self.add(str(spec["knowledge"]), label,
                     self.ids(*[("st_j", lead) for lead in leads],
                              *[("st_deviation", lead) for lead in leads]),
                     (str(spec["knowledge"]),), "; ".join(notes), state=state, lead=leads[0])
            fired.append(territory)
        # ST depression: two contiguous leads, horizontal or downsloping
        depressed: list[str] = []
        for seq in C.CONTIGUOUS_SEQUENCES:
            for a, b in zip(seq, seq[1:], strict=False):
                if a in pl and b in pl and all(self._depressed(pl[x]) for x in (a, b)):
                    depressed += [x for x in (a, b) if x not in depressed]
        if depressed:
            leads = sorted(depressed, key=STANDARD_LEADS.index)
            values = ", ".join(f"{lead} {pl[lead]['st_j']:.2f} mV" for lead in leads)
            notes = [f"horizontal or downsloping ST depression >= {C.STD_MIN} at the J point in "
                     f"contiguous leads: {values}"]
            state = "present"
            if confounder:
                state = "uncertain"
                notes.append(f"{confounder} causes secondary ST-T changes")
            self.add("ecg-st-depression", f"ST depression ({', '.join(leads)})",
                     self.ids(*[("st_j", lead) for lead in leads],
                              *[("st_deviation", lead) for lead in leads]),
                     ("ecg-st-depression",), "; ".join(notes), state=state, lead=leads[0])
            fired.append("depression")
        return fired

    @staticmethod
    def _depressed(lead: dict[str, float]) -> bool:
        st_j = lead["st_j"]
        if st_j > -C.STD_MIN.value:
            return False
        later = lead.get("st_deviation")
        return later is None or later <= st_j + C.STD_MAX_UPSLOPE.value

    def low_voltage(self) -> bool:
        fired = False
        for group, thr, name in ((LIMB_LEADS, C.LOW_VOLTAGE_LIMB_BELOW, "limb"),
                                 (PRECORDIAL_LEADS, C.LOW_VOLTAGE_PRECORDIAL_BELOW,
                                  "precordial")):
            if not all(lead in self.pl for lead in group):
                continue
            amps = {lead: self.pl[lead]["qrs_amplitude"] for lead in group}
            if max(amps.values()) < thr.value:
                self.add("ecg-low-voltage", f"Low QRS voltage in the {name} leads",
                         self.ids(*[("qrs_amplitude", lead) for lead in group]),
                         ("ecg-low-voltage",),
                         f"QRS peak-to-peak amplitude < {thr} in every {name} lead (largest "
                         f"{max(amps.values()):.2f} mV)")
                fired = True
        return fired

    def ectopy(self, rhythm: str | None) -> bool:
        fired = False
        for kind, code, label, count in (
                ("V", "ecg-premature-ventricular-complex", "Premature ventricular complex",
                 "pvc_count"),
                ("A", "ecg-premature-atrial-complex", "Premature atrial complex", "pac_count")):
            beats = tuple(b.index for b in self.a.beats if b.kind == kind)
            if not beats or (kind == "A" and rhythm == "af"):
                continue
            n = len(beats)
            what = (f"RR < {C.PREMATURE_RR_FRACTION.value:.0%} of the local mean RR with a QRS "
                    f"unlike the dominant beat (correlation < {C.PVC_MAX_CORRELATION.value:g}) "
                    f"or >= {C.PVC_QRS_MIN}" if kind == "V" else
                    f"RR < {C.PREMATURE_RR_FRACTION.value:.0%} of the local mean RR with a QRS "
                    "like the dominant beat")
            self.add(code, f"{label}{'es' if n > 1 else ''} ({n})", self.ids((count, None)),
                     (code,), f"{n} premature beat(s): {what}", beats=beats)
            fired = True
        return fired

    def normal(self, rhythm: str | None, n_bad: int, abnormal: bool) -> None:
        v = self.v
        checks: list[tuple[bool, str]] = [
            (all(lead in self.pl for lead in STANDARD_LEADS), "12 standard leads"),
            (n_bad == 0, "adequate quality in every lead"),
            (rhythm == "sinus", "sinus rhythm 60-100 bpm"),
            ("pr_interval" in v and C.PR_NORMAL_MIN.value <= v["pr_interval"]
             <= C.FIRST_DEGREE_AV_BLOCK_PR_ABOVE.value, "PR 120-200 ms"),
            ("qrs_duration" in v and v["qrs_duration"] <= C.QRS_NORMAL_MAX.value,
             f"QRS <= {C.QRS_NORMAL_MAX}"),
            ("qtc_bazett" in v and v["qtc_bazett"] < C.QTC_PROLONGED_MALE.value,
             f"QTc < {C.QTC_PROLONGED_MALE}"),
            ("qrs_axis" in v and C.LEFT_AXIS_BELOW.value <= v["qrs_axis"]
             <= C.RIGHT_AXIS_ABOVE.value, "QRS axis -30..90 deg"),
            (not abnormal, "no other abnormal statement"),
        ]
        if all(ok for ok, _ in checks):
            self.add("ecg-normal-ecg", "Normal ECG",
                     self.ids(("heart_rate", None), ("pr_interval", None),
                              ("qrs_duration", None), ("qtc_bazett", None), ("qrs_axis", None)),
                     ("ecg-normal-ecg",), "; ".join(text for _, text in checks))


def interpret(a: EcgAnalysis, sex: str | None = None, age: float | None = None) -> Interpretation:
    """Findings for one analysed ECG. ``sex`` ("M"/"F") and ``age`` (years) select the
    sex- and age-specific cut-offs; when absent, the record's own values are used."""
    sex = sex or a.record.patient.get("sex")
    age = age if age is not None else a.record.patient.get("age_years")
    r = _Rules(a, sex, age)
    n_bad = r.quality()
    usable_std = [q for q in a.quality if q.lead in STANDARD_LEADS and q.adequate]
    if a.median is None or not usable_std:
        r.out.warnings.append("no interpretable beat: only signal quality is reported")
        return r.out
    if n_bad > 6:
        r.out.warnings.append(f"{n_bad} leads of poor quality: morphology statements withheld")
    rhythm = r.rhythm()
    r.av_conduction(rhythm)
    conduction = r.ventricular_conduction()
    wide = conduction is not None
    r.qt(wide)
    axis = r.axis()
    morphology_ok = n_bad <= 6
    lvh = r.lvh(conduction) if morphology_ok else False
    confounder = {"lbbb": "LBBB", "ivcd": "wide QRS"}.get(conduction or "")
    if confounder is None and lvh:
        confounder = "LVH voltage"
    st = r.st(confounder) if morphology_ok else []
    low = r.low_voltage() if morphology_ok else False
    ectopy = r.ectopy(rhythm)
    abnormal = bool(
        conduction or lvh or st or low or ectopy or axis not in ("normal", None)
        or any(f.code.value in ("ecg-prolonged-qt", "ecg-first-degree-av-block")
               for f in r.out.findings))
    r.normal(rhythm, n_bad, abnormal)
    return r.out
