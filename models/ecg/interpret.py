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
        """The rhythm, decided on the dominant beats once premature beats are set aside, in this
        order: paced, atrial flutter, atrial fibrillation, third-degree AV block, sinus (with
        second-degree block when a P wave conducts nothing), junctional; otherwise not
        classified, with the reason."""
        v = self.v
        if v.get("beat_count", 0) < MIN_RHYTHM_BEATS or not self.has("heart_rate"):
            return None
        hr = v["heart_rate"]
        rate = v.get("underlying_rate", hr)
        all_beats = tuple(b.index for b in self.a.beats)
        rate_ev = self.ids(("heart_rate", None), ("underlying_rate", None))
        for rule in (self._paced, self._flutter, self._af, self._complete_block, self._sinus,
                     self._junctional):
            got = rule(hr, rate, rate_ev, all_beats)
            if got:
                return got
        p_cons, p_lock = v.get("p_wave_consistency", 0.0), v.get("p_locked_fraction", 0.0)
        irr = v.get("rr_irregularity", 0.0)
        qrs = v.get("qrs_duration")
        if self._organised_p():
            reason = f"P waves present but not sinus ({self._p_axis_text()[1]})"
        elif irr > C.AF_RR_IRREGULARITY.value:
            reason = (f"irregular RR (RMSSD/mean RR {irr:.2f}) but fewer than "
                      f"{C.AF_MIN_BEATS.value:g} beats or P waves not clearly absent (P wave "
                      f"before {p_cons:.0%}, locked to {p_lock:.0%} of beats)")
        elif qrs is not None and qrs >= C.BUNDLE_BRANCH_BLOCK_QRS_MIN.value:
            reason = f"regular wide-QRS rhythm ({qrs:.0f} ms) without P waves"
        elif rate > C.ACCELERATED_JUNCTIONAL_RATE_MAX.value:
            reason = ("regular narrow-QRS tachycardia without visible P waves (supraventricular "
                      "tachycardia or junctional tachycardia)")
        else:
            reason = "no organised P waves and the RR neither regular nor irregular enough"
        self.add("ecg-rhythm-undetermined", "Rhythm not classified; review the tracing",
                 rate_ev + self.ids(("p_wave_consistency", None), ("p_locked_fraction", None),
                                    ("rr_irregularity", None), ("p_axis", None)),
                 ("ecg-sinus-rhythm", "ecg-atrial-fibrillation"),
                 f"{reason}; rate {hr:.0f} bpm", state="uncertain", beats=all_beats)
        return "undetermined"

    # -- rhythm rules, each returning its rhythm name or None -----------------------------------
    def _organised_p(self) -> bool:
        v = self.v
        p_amp = v.get("p_amplitude", 0.0)
        return p_amp >= C.P_WAVE_MIN_AMPLITUDE.value and (
            v.get("p_wave_consistency", 0.0) >= C.P_WAVE_MIN_CONSISTENCY.value
            or v.get("p_locked_fraction", 0.0) >= C.P_LOCKED_MIN.value)

    def _regular_atrial(self) -> bool:
        v = self.v
        return (v.get("atrial_event_count", 0) >= 4
                and v.get("pp_regular_fraction", 0.0) >= C.REGULAR_PP_MIN_FRACTION.value)

    def _p_axis_text(self) -> tuple[bool, str]:
        p_axis = self.v.get("p_axis")
        if p_axis is not None:
            ok = C.SINUS_P_AXIS_MIN.value <= p_axis <= C.SINUS_P_AXIS_MAX.value
            return ok, (f"P axis {p_axis:.0f} deg (sinus: {C.SINUS_P_AXIS_MIN.value:g}.."
                        f"{C.SINUS_P_AXIS_MAX.value:g} deg)")
        # without leads I and aVF: a sinus P wave is upright in II (AHA2007-I)
        p_ii = self.pl.get("II", {}).get("p_wave")
        ok = p_ii is not None and p_ii > 0
        return ok, "P wave upright in II" if ok else "P wave not upright in II"

    def _paced(self, hr: float, rate: float, rate_ev: tuple[str, ...],
               all_beats: tuple[int, ...]) -> str | None:
        v = self.v
        fv = v.get("paced_ventricular_fraction", 0.0)
        fa = v.get("paced_atrial_fraction", 0.0)
        need = C.PACED_MIN_FRACTION.value
        if fv < need and fa < need:
            return None
        mode = ("dual" if fv >= need and fa >= need else "ventricular" if fv >= need
                else "atrial")
        label = {"dual": "AV sequential (dual-chamber) paced rhythm",
                 "ventricular": "Ventricular paced rhythm",
                 "atrial": "Atrial paced rhythm"}[mode]
        n = int(self.a.spikes.size)
        self.add("ecg-paced-rhythm", label,
                 rate_ev + self.ids(("paced_ventricular_fraction", None),
                                    ("paced_atrial_fraction", None)),
                 ("ecg-paced-rhythm",),
                 f"{n} pacing stimuli; a stimulus precedes the QRS in {fv:.0%} and the P wave in "
                 f"{fa:.0%} of beats (>= {need:.0%}); rate {hr:.0f} bpm", beats=all_beats)
        return f"paced-{mode}"

    def _flutter(self, hr: float, rate: float, rate_ev: tuple[str, ...],
                 all_beats: tuple[int, ...]) -> str | None:
        v = self.v
        corr = v.get("flutter_correlation")
        if corr is None or corr < C.FLUTTER_MIN_CORRELATION.value:
            return None
        atrial_rate = 60000.0 / v["flutter_cycle"]
        if not C.FLUTTER_RATE_MIN.value <= atrial_rate <= C.FLUTTER_RATE_MAX.value:
            return None
        irr = v.get("rr_irregularity", 0.0)
        ratio = atrial_rate / hr
        fixed = irr <= C.AF_RR_IRREGULARITY.value and abs(ratio - round(ratio)) <= 0.15
        conduction = f"{round(ratio)}:1 AV conduction" if fixed else "variable AV conduction"
        self.add("ecg-atrial-flutter", f"Atrial flutter with {conduction}",
                 rate_ev + self.ids(("flutter_cycle", None), ("flutter_correlation", None),
                                    ("rr_irregularity", None)),
                 ("ecg-atrial-flutter", "ecg-heart-rate"),
                 f"regular atrial activity at {atrial_rate:.0f}/min ({C.FLUTTER_RATE_MIN.value:g}"
                 f"-{C.FLUTTER_RATE_MAX}) in II, III, aVF, V1 (autocorrelation {corr:.2f} >= "
                 f"{C.FLUTTER_MIN_CORRELATION.value:g} at the atrial cycle "
                 f"{v['flutter_cycle']:.0f} ms, QRS blanked); ventricular rate {hr:.0f} bpm, "
                 f"atrial/ventricular {ratio:.1f}", beats=all_beats)
        return "flutter"

    def _af(self, hr: float, rate: float, rate_ev: tuple[str, ...],
            all_beats: tuple[int, ...]) -> str | None:
        v = self.v
        irr = v.get("rr_irregularity", 0.0)
        p_cons = v.get("p_wave_consistency", 0.0)
        p_lock = v.get("p_locked_fraction", 0.0)
        # the QRST-cancelled P waves decide (p_lock); the median-P template match, which the
        # previous T wave can fool when the RR varies, must not show organised P waves either
        # and regular P waves that do not conduct each time (AV block) are not fibrillation
        if not (irr > C.AF_RR_IRREGULARITY.value and v["beat_count"] >= C.AF_MIN_BEATS.value
                and p_lock < C.AF_MAX_P_LOCKED.value
                and p_cons < C.P_WAVE_MIN_CONSISTENCY.value and not self._regular_atrial()):
            return None
        response = (" with rapid ventricular response" if hr > C.SINUS_TACHYCARDIA_ABOVE.value
                    else " with slow ventricular response"
                    if hr < C.SINUS_BRADYCARDIA_BELOW.value else "")
        self.add("ecg-atrial-fibrillation", f"Atrial fibrillation{response}",
                 rate_ev + self.ids(("rr_irregularity", None), ("p_wave_consistency", None),
                                    ("p_locked_fraction", None)),
                 ("ecg-atrial-fibrillation", "ecg-heart-rate"),
                 f"irregularly irregular RR over the whole record once premature beats with a P "
                 f"wave and ventricular ectopics are set aside (RMSSD/mean RR {irr:.2f} > "
                 f"{C.AF_RR_IRREGULARITY.value:g}, >= {C.AF_MIN_BEATS.value:g} beats) without "
                 f"organised P waves (an atrial event at a fixed PR before {p_lock:.0%} < "
                 f"{C.AF_MAX_P_LOCKED.value:.0%} and a P wave matching the median one before "
                 f"{p_cons:.0%} < {C.P_WAVE_MIN_CONSISTENCY.value:.0%} of beats); ventricular rate "
                 f"{hr:.0f} bpm", beats=all_beats)
        return "af"

    def _complete_block(self, hr: float, rate: float, rate_ev: tuple[str, ...],
                        all_beats: tuple[int, ...]) -> str | None:
        v = self.v
        need = ("atrial_rate", "pp_regular_fraction", "pr_range")
        if any(k not in v for k in need) or not self._regular_atrial():
            return None
        atrial_rate, pp_reg, pr_range = v["atrial_rate"], v["pp_regular_fraction"], v["pr_range"]
        irr = v.get("rr_irregularity", 0.0)
        if not (atrial_rate >= C.AV_DISSOCIATION_RATE_RATIO.value * rate
                and pr_range > C.AV_DISSOCIATION_PR_RANGE.value
                and irr <= C.AF_RR_IRREGULARITY.value
                and v.get("p_locked_fraction", 0.0) < C.P_LOCKED_MIN.value):
            return None
        qrs = v.get("qrs_duration", 0.0)
        # the label says narrow or wide; "junctional" would read back as junctional rhythm
        escape = ("a wide-QRS (ventricular) escape" if qrs >= C.BUNDLE_BRANCH_BLOCK_QRS_MIN.value
                  else "a narrow-QRS escape")
        self.add("ecg-third-degree-av-block", f"Third-degree (complete) AV block with {escape}",
                 rate_ev + self.ids(("atrial_rate", None), ("pp_regular_fraction", None),
                                    ("pr_range", None), ("rr_irregularity", None),
                                    ("qrs_duration", None)),
                 ("ecg-third-degree-av-block", "ecg-heart-rate"),
                 f"regular P waves at {atrial_rate:.0f}/min ({pp_reg:.0%} of PP intervals at the "
                 f"atrial cycle) faster than a regular ventricular rhythm at "
                 f"{rate:.0f} bpm (ratio >= {C.AV_DISSOCIATION_RATE_RATIO.value:g}) with no "
                 f"fixed PR (range {pr_range:.0f} ms > {C.AV_DISSOCIATION_PR_RANGE}); QRS "
                 f"{qrs:.0f} ms", beats=all_beats)
        return "complete-block"

    def _sinus(self, hr: float, rate: float, rate_ev: tuple[str, ...],
               all_beats: tuple[int, ...]) -> str | None:
        v = self.v
        axis_ok, p_text = self._p_axis_text()
        # with dropped beats the PR varies (Mobitz I) and the median P smears: the regular P
        # waves over the record are the sinus rhythm, the atrial rate its rate
        blocked = bool(self.a.pauses) and self._regular_atrial()
        if blocked:
            rate = v.get("atrial_rate", rate)
            if "p_axis" not in v:
                axis_ok, p_text = True, "P axis not measured (the PR varies)"
        if not ((self._organised_p() or blocked) and axis_ok):
            return None
        p_cons, p_lock = v.get("p_wave_consistency", 0.0), v.get("p_locked_fraction", 0.0)
        ev = rate_ev + self.ids(("p_wave_consistency", None), ("p_locked_fraction", None),
                                ("p_axis", None), ("p_amplitude", None))
        base = (f"P wave before {max(p_cons, p_lock):.0%} of dominant beats, {p_text}; sinus "
                f"rate {rate:.0f} bpm on the dominant beats")
        if rate != hr:
            base += f" (ventricular rate {hr:.0f} bpm with the premature beats)"
        if rate < C.SINUS_BRADYCARDIA_BELOW.value:
            self.add("ecg-sinus-bradycardia", "Sinus bradycardia", ev,
                     ("ecg-sinus-bradycardia", "ecg-sinus-rhythm", "ecg-heart-rate"),
                     f"{base} < {C.SINUS_BRADYCARDIA_BELOW}", beats=all_beats)
            name = "sinus-brady"
        elif rate > C.SINUS_TACHYCARDIA_ABOVE.value:
            self.add("ecg-sinus-tachycardia", "Sinus tachycardia", ev,
                     ("ecg-sinus-tachycardia", "ecg-sinus-rhythm", "ecg-heart-rate"),
                     f"{base} > {C.SINUS_TACHYCARDIA_ABOVE}", beats=all_beats)
            name = "sinus-tachy"
        else:
            self.add("ecg-sinus-rhythm", "Sinus rhythm", ev,
                     ("ecg-sinus-rhythm", "ecg-heart-rate"),
                     f"{base} within {C.SINUS_BRADYCARDIA_BELOW.value:g}-"
                     f"{C.SINUS_TACHYCARDIA_ABOVE.value:g} bpm", beats=all_beats)
            name = "sinus"
        self._second_degree()
        return name

    def _second_degree(self) -> None:
        pauses = self.a.pauses
        if not pauses:
            return
        ev = self.ids(("dropped_beat_count", None), ("nonconducted_p_count", None),
                      ("pr_interval", None), ("atrial_rate", None))
        beats = tuple(p["beat"] for p in pauses)
        where = ", ".join(f"{p['time_s']:.2f} s" for p in pauses)
        changes = [(p["pr_before"] - p["pr_after"]) for p in pauses
                   if p["pr_before"] is not None and p["pr_after"] is not None]
        if changes and min(changes) >= C.MOBITZ1_PR_SHORTENING_MIN.value:
            self.add("ecg-second-degree-av-block-mobitz-1",
                     "Second-degree AV block, Mobitz type I (Wenckebach)", ev,
                     ("ecg-second-degree-av-block-mobitz-1",),
                     f"{len(pauses)} P wave(s) on time that conducted nothing (at {where}), each "
                     f"in a pause >= {C.DROPPED_BEAT_PAUSE_MIN.value:g} RR; the PR before the "
                     f"pause is longer than after it by {min(changes):.0f} ms or more (>= "
                     f"{C.MOBITZ1_PR_SHORTENING_MIN})", beats=beats)
        elif changes and max(abs(c) for c in changes) <= C.MOBITZ2_PR_CHANGE_MAX.value:
            self.add("ecg-second-degree-av-block-mobitz-2", "Second-degree AV block, Mobitz "
                     "type II", ev, ("ecg-second-degree-av-block-mobitz-2",),
                     f"{len(pauses)} P wave(s) on time that conducted nothing (at {where}), each "
                     f"in a pause >= {C.DROPPED_BEAT_PAUSE_MIN.value:g} RR, with the same PR "
                     f"before and after it (within {C.MOBITZ2_PR_CHANGE_MAX})", beats=beats)
        else:
            self.add("ecg-second-degree-av-block-mobitz-1", "Second-degree AV block, type not "
                     "determined", ev, ("ecg-second-degree-av-block-mobitz-1",
                                        "ecg-second-degree-av-block-mobitz-2"),
                     f"{len(pauses)} P wave(s) on time that conducted nothing (at {where}); the "
                     "PR around the pause neither shortens by "
                     f"{C.MOBITZ1_PR_SHORTENING_MIN} nor stays within "
                     f"{C.MOBITZ2_PR_CHANGE_MAX}", state="uncertain", beats=beats)

    def _junctional(self, hr: float, rate: float, rate_ev: tuple[str, ...],
                    all_beats: tuple[int, ...]) -> str | None:
        v = self.v
        irr = v.get("rr_irregularity", 0.0)
        qrs = v.get("qrs_duration")
        if (qrs is None or qrs >= C.BUNDLE_BRANCH_BLOCK_QRS_MIN.value
                or irr > C.REGULAR_RR_MAX.value
                or rate > C.ACCELERATED_JUNCTIONAL_RATE_MAX.value):
            return None
        retro = False
        if self._organised_p():
            # a retrograde P: inverted in II with a short PR (activation from the AV junction)
            p_ii = self.pl.get("II", {}).get("p_wave")
            pr = v.get("pr_interval")
            retro = bool(p_ii is not None and p_ii < 0 and pr is not None
                         and pr < C.RETROGRADE_PR_BELOW.value)
            if not retro:
                return None
        elif v.get("p_locked_fraction", 0.0) >= C.AF_MAX_P_LOCKED.value:
            return None
        kind = ("Junctional rhythm" if rate < C.JUNCTIONAL_RATE_MAX.value
                else "Accelerated junctional rhythm")
        p_text = (f"retrograde P wave (inverted in II, PR {v['pr_interval']:.0f} ms < "
                  f"{C.RETROGRADE_PR_BELOW})" if retro else "no P wave before the QRS")
        self.add("ecg-junctional-rhythm", kind,
                 rate_ev + self.ids(("rr_irregularity", None), ("qrs_duration", None),
                                    ("p_wave_consistency", None), ("pr_interval", None)),
                 ("ecg-junctional-rhythm", "ecg-heart-rate"),
                 f"regular (RMSSD/mean RR {irr:.2f} <= {C.REGULAR_RR_MAX.value:g}) narrow QRS "
                 f"({qrs:.0f} ms) with {p_text}; rate {rate:.0f} bpm (junctional < "
                 f"{C.JUNCTIONAL_RATE_MAX}, accelerated < {C.ACCELERATED_JUNCTIONAL_RATE_MAX})",
                 beats=all_beats)
        return "junctional"

    def av_conduction(self, rhythm: str | None) -> None:
        if rhythm not in ("sinus", "sinus-brady", "sinus-tachy") or not self.has("pr_interval"):
            return
        pr = self.v["pr_interval"]
        if pr > C.FIRST_DEGREE_AV_BLOCK_PR_ABOVE.value:
            self.add("ecg-first-degree-av-block", "First-degree AV block",
                     self.ids(("pr_interval", None)),
                     ("ecg-first-degree-av-block", "ecg-pr-interval"),
                     f"PR {pr:.0f} ms > {C.FIRST_DEGREE_AV_BLOCK_PR_ABOVE} with a P wave before "
                     f"each conducted QRS")

    def ventricular_conduction(self) -> str | None:
        """Bundle branch blocks and IVCD from QRS duration and morphology (AHA2009-III)."""
        if not self.has("qrs_duration"):
            return None
        qrs = self.v["qrs_duration"]
        if qrs <= C.IVCD_QRS_MIN.value:
            return None
        pl = self.pl
        ev_qrs = self.ids(("qrs_duration", None))
        complete = qrs >= C.BUNDLE_BRANCH_BLOCK_QRS_MIN.value
        if not {"V1", "V6", "I"} <= pl.keys():
            self.add("ecg-ivcd", "Wide QRS; bundle branch morphology not assessable",
                     ev_qrs, ("ecg-ivcd", "ecg-qrs-duration"),
                     f"QRS {qrs:.0f} ms > {C.IVCD_QRS_MIN}; leads I, V1 and V6 are needed to "
                     "tell RBBB from LBBB", state="uncertain")
            return "ivcd"
        v1, v6, l1 = pl["V1"], pl["V6"], pl["I"]
        v2 = pl.get("V2", v1)
        # RBBB (AHA2009-III): rsr', rsR' or rSR' in V1 or V2 (or a broad notched R there), and
        # an S wave longer than 40 ms (or than the R) in leads I and V6
        r_prime = max(v1["r_prime_amplitude"], v2["r_prime_amplitude"])
        broad_r_v1 = v1["terminal_area"] > 0 and v1["r_amplitude"] > v1["s_amplitude"] and \
            v1["r_peak_time"] > 50.0
        s_i, s_v6 = l1["terminal_s_duration"], v6["terminal_s_duration"]
        s_wide = min(s_i, s_v6) > C.RBBB_TERMINAL_S_MIN_MS.value
        if (r_prime >= C.R_PRIME_MIN.value or broad_r_v1) and s_wide:
            v1_text = (f"R' {r_prime:.2f} mV in V1/V2 (>= {C.R_PRIME_MIN})"
                       if r_prime >= C.R_PRIME_MIN.value else
                       f"broad R in V1 (R-peak time {v1['r_peak_time']:.0f} ms)")
            ev = ev_qrs + self.ids(("r_prime_amplitude", "V1"), ("r_prime_amplitude", "V2"),
                                   ("terminal_s_duration", "I"), ("terminal_s_duration", "V6"),
                                   ("r_peak_time", "V1"))
            crit = (f"QRS {qrs:.0f} ms; {v1_text}; terminal S {s_i:.0f} ms in I and "
                    f"{s_v6:.0f} ms in V6 (> {C.RBBB_TERMINAL_S_MIN_MS})")
            if complete:
                self.add("ecg-rbbb", "Complete right bundle branch block", ev,
                         ("ecg-rbbb", "ecg-qrs-duration"),
                         f"{crit}; QRS >= {C.BUNDLE_BRANCH_BLOCK_QRS_MIN}", lead="V1")
                return "rbbb"
            self.add("ecg-incomplete-rbbb", "Incomplete right bundle branch block", ev,
                     ("ecg-incomplete-rbbb", "ecg-rbbb"),
                     f"{crit}; QRS {C.INCOMPLETE_RBBB_QRS_MIN.value:g}-"
                     f"{C.BUNDLE_BRANCH_BLOCK_QRS_MIN.value - 1:g} ms", lead="V1")
            return "irbbb"
        rpt = max(v6["r_peak_time"], pl.get("V5", v6)["r_peak_time"])
        q_lat = max(l1["q_amplitude"], v6["q_amplitude"])
        if (complete and v1["terminal_area"] < 0 and v1["s_amplitude"] > v1["r_amplitude"]
                and q_lat < C.LBBB_MAX_Q_DEPTH.value
                and rpt > C.LBBB_R_PEAK_TIME_V6_MIN.value
                and v6["r_amplitude"] > v6["s_amplitude"]):
            notched = [lead for lead in ("I", "aVL", "V5", "V6")
                       if pl.get(lead, {}).get("r_notch")]
            notch_text = (f"; notched or slurred R in {', '.join(notched)}" if notched
                          else "; no notched R found in I, aVL, V5, V6")
            self.add("ecg-lbbb", "Complete left bundle branch block",
                     ev_qrs + self.ids(("terminal_area", "V1"), ("s_amplitude", "V1"),
                                       ("r_amplitude", "V1"), ("q_amplitude", "I"),
                                       ("q_amplitude", "V6"), ("r_peak_time", "V6"),
                                       ("r_peak_time", "V5"), ("r_amplitude", "V6"),
                                       *[("r_notch", lead) for lead in notched]),
                     ("ecg-lbbb", "ecg-qrs-duration"),
                     f"QRS {qrs:.0f} ms >= {C.BUNDLE_BRANCH_BLOCK_QRS_MIN}; V1 predominantly "
                     f"negative (S {v1['s_amplitude']:.2f} > R {v1['r_amplitude']:.2f} mV); no q "
                     f"in I/V6 (deepest {q_lat:.2f} mV < {C.LBBB_MAX_Q_DEPTH}); R-peak time "
                     f"V5/V6 {rpt:.0f} ms > {C.LBBB_R_PEAK_TIME_V6_MIN}{notch_text}", lead="V6")
            return "lbbb"
        self.add("ecg-ivcd", "Non-specific intraventricular conduction delay", ev_qrs
                 + self.ids(("r_prime_amplitude", "V1"), ("terminal_s_duration", "I"),
                            ("terminal_s_duration", "V6"), ("r_peak_time", "V6")),
                 ("ecg-ivcd", "ecg-qrs-duration"),
                 f"QRS {qrs:.0f} ms > {C.IVCD_QRS_MIN} without the criteria of RBBB (R' in "
                 f"V1/V2 {r_prime:.2f} mV, terminal S I/V6 {s_i:.0f}/{s_v6:.0f} ms) or LBBB")
        return "ivcd"

    def qt(self, qrs_wide: bool, rhythm: str | None) -> bool:
        """Prolonged QT on the linear (Framingham) QTc, AHA2009-IV; with a wide QRS on the QT
        shortened by the QRS widening; in AF on the mean RR and never more than uncertain."""
        v = self.v
        if "qt_interval" not in v or "rr_interval" not in v:
            return False
        qt, qrs, rr_s = v["qt_interval"], v.get("qrs_duration", 0.0), v["rr_interval"] / 1000.0
        adjust = qrs_wide and qrs >= C.QT_WIDE_QRS_MIN.value
        qt_used = qt - (qrs - C.QT_QRS_REFERENCE.value) if adjust else qt
        qtc = qt_used + 154.0 * (1.0 - rr_s)
        thr, sex_known = C.qtc_threshold(self.sex)
        low = C.QTC_PROLONGED_MALE.value
        who = {"M": "men", "F": "women"}.get(self.sex or "", "unknown sex: the women's cut-off")
        ev = self.ids(("qtc_framingham", None), ("qtc_bazett", None), ("qtc_fridericia", None),
                      ("qt_interval", None), ("qrs_duration", None), ("heart_rate", None))
        kn = ("ecg-prolonged-qt", "ecg-qtc-formulas", "ecg-qt-interval")
        how = (f"QT {qt:.0f} ms less the QRS widening beyond {C.QT_QRS_REFERENCE} "
               f"(QRS {qrs:.0f} ms) = {qt_used:.0f} ms, then " if adjust else f"QT {qt:.0f} ms, ")
        crit = (f"{how}QTc (Framingham, QT + 154 (1 - RR)) {qtc:.0f} ms >= {thr} ({who}); "
                f"Bazett {v.get('qtc_bazett', 0):.0f}, Fridericia {v.get('qtc_fridericia', 0):.0f}"
                " ms for reference")
        if qtc < low or (qtc < thr.value and sex_known):
            return False
        state, notes = "present", []
        label = "Prolonged QT interval"
        if qtc < thr.value:
            state, label = "uncertain", "Possibly prolonged QT interval (sex not recorded)"
            crit = (f"{how}QTc (Framingham) {qtc:.0f} ms is >= {C.QTC_PROLONGED_MALE} (men) but "
                    f"< {C.QTC_PROLONGED_FEMALE} (women); the record does not state the sex")
        if rhythm in ("af", "flutter"):
            state = "uncertain"
            notes.append("with an irregular or flutter-wave baseline the QT changes beat to beat "
                         "and the T end is obscured; this QTc is the median beat's QT corrected "
                         "with the mean RR")
        if rhythm and rhythm.startswith("paced"):
            state = "uncertain"
            notes.append("paced QRS: repolarisation follows the paced activation")
        self.add("ecg-prolonged-qt", label, ev, kn, "; ".join([crit] + notes), state=state)
        return True

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
        """Premature complexes. Ventricular: a QRS unlike the dominant one without a premature P
        wave; atrial: premature with a dominant-like QRS or after a premature P wave (aberrant
        when wide). In AF, atrial prematurity is the rhythm itself, and a wide beat may be
        aberrant: it is stated as uncertain."""
        beats = self.a.beats
        if rhythm and rhythm.startswith("paced"):
            return False
        n_all = max(len(beats), 1)
        fired = False
        v_beats = tuple(b.index for b in beats if b.kind == "V")
        if v_beats:
            n = len(v_beats)
            comp = sum(bool(beats[i].compensatory) for i in v_beats)
            what = (f"QRS unlike the dominant beat (correlation < "
                    f"{C.PVC_MAX_CORRELATION.value:g}, or >= {C.PVC_QRS_MIN} and "
                    f"{C.PVC_QRS_WIDER_BY} wider than the dominant QRS) without a premature P "
                    f"wave before it; {comp} of {n} with a compensatory pause")
            state = "present"
            label = ("Frequent premature ventricular complexes"
                     if n / n_all >= C.FREQUENT_ECTOPY_FRACTION.value else
                     "Premature ventricular complexes" if n > 1 else
                     "Premature ventricular complex")
            if rhythm == "af":
                state = "uncertain"
                label = "Wide beat: premature ventricular complex or aberrant conduction"
                what += ("; in atrial fibrillation aberrant conduction cannot be told from "
                         "ventricular ectopy on the surface ECG")
            self.add("ecg-premature-ventricular-complex", f"{label} ({n} of {len(beats)} beats)",
                     self.ids(("pvc_count", None)),
                     ("ecg-premature-ventricular-complex",), f"{n} beat(s): {what}",
                     state=state, beats=v_beats)
            fired = True
        a_beats = tuple(b.index for b in beats if b.kind == "A")
        if a_beats and rhythm not in ("af", "flutter"):
            n = len(a_beats)
            with_p = sum(beats[i].premature_p for i in a_beats)
            aberrant = tuple(i for i in a_beats if beats[i].aberrant)
            freq = n / n_all >= C.FREQUENT_ECTOPY_FRACTION.value
            label = ("Frequent premature atrial complexes" if freq else
                     "Premature atrial complexes" if n > 1 else "Premature atrial complex")
            what = (f"RR < {C.PREMATURE_RR_FRACTION.value:.0%} of the local RR with a QRS like "
                    f"the dominant beat or after a premature P wave; a premature P wave seen "
                    f"before {with_p} of {n}")
            if aberrant:
                what += f"; {len(aberrant)} conducted with a wide QRS (aberrant conduction)"
            if freq:
                what += f" (>= {C.FREQUENT_ECTOPY_FRACTION.value:.0%} of beats: frequent)"
            self.add("ecg-premature-atrial-complex", f"{label} ({n} of {len(beats)} beats)",
                     self.ids(("pac_count", None)), ("ecg-premature-atrial-complex",),
                     what, beats=a_beats)
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
            ("qtc_framingham" in v and v["qtc_framingham"] < C.QTC_PROLONGED_MALE.value,
             f"QTc (Framingham) < {C.QTC_PROLONGED_MALE}"),
            ("qrs_axis" in v and C.LEFT_AXIS_BELOW.value <= v["qrs_axis"]
             <= C.RIGHT_AXIS_ABOVE.value, "QRS axis -30..90 deg"),
            (not abnormal, "no other abnormal statement"),
        ]
        if all(ok for ok, _ in checks):
            self.add("ecg-normal-ecg", "Normal ECG",
                     self.ids(("heart_rate", None), ("pr_interval", None),
                              ("qrs_duration", None), ("qtc_framingham", None),
                              ("qrs_axis", None)),
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
    paced = bool(rhythm and rhythm.startswith("paced"))
    r.av_conduction(rhythm)
    # a paced QRS is wide by design: conduction and voltage statements would describe the pacing
    conduction = None if paced else r.ventricular_conduction()
    wide = conduction in ("rbbb", "lbbb", "ivcd") or paced
    r.qt(wide, rhythm)
    axis = None if paced else r.axis()
    morphology_ok = n_bad <= 6 and not paced
    lvh = r.lvh(conduction) if morphology_ok else False
    confounder = {"lbbb": "LBBB", "ivcd": "wide QRS"}.get(conduction or "")
    if confounder is None and lvh:
        confounder = "LVH voltage"
    if confounder is None and rhythm == "flutter":
        confounder = "Flutter waves in the ST segment"
    st = r.st(confounder) if morphology_ok else []
    low = r.low_voltage() if morphology_ok else False
    ectopy = r.ectopy(rhythm)
    abnormal = bool(
        conduction or lvh or st or low or ectopy or axis not in ("normal", None)
        or any(f.code.value not in NORMAL_CODES for f in r.out.findings))
    r.normal(rhythm, n_bad, abnormal)
    return r.out
