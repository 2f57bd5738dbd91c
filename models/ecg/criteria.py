"""Every clinical threshold the ECG interpretation uses, each with its source and knowledge id.

Nothing else in ``models.ecg`` holds a clinical number: ``interpret.py`` reads them from here, and
``docs/ecg.md`` prints the same table. Engineering constants of the signal processing (filter
cut-offs, detector time constants) live beside the code that uses them; they are not clinical
criteria.

Sources (short names used below):

- AHA2007-I: AHA/ACCF/HRS Recommendations for the Standardization and Interpretation of the ECG,
  Part I (Kligfield et al.), 2007.
- AHA2009-III: same series, Part III, Intraventricular Conduction Disturbances (Surawicz et al.).
- AHA2009-IV: Part IV, ST Segment, T and U Waves, and the QT Interval (Rautaharju et al.).
- AHA2009-V: Part V, Chamber Hypertrophy (Hancock et al.).
- UDMI4: Fourth Universal Definition of Myocardial Infarction (Thygesen et al.), 2018.
- AF2023: 2023 ACC/AHA/ACCP/HRS Guideline for the Diagnosis and Management of AF; ESC AF 2024.
- BRADY2018: ACC/AHA/HRS Guideline on Bradycardia and Cardiac Conduction Delay, 2018.
- SOKOLOW1949: Sokolow M, Lyon TP, Am Heart J 1949.  CASALE1985: Casale PN et al., Circulation
  1985 (Cornell voltage).
- SVT2019: 2019 ESC Guidelines for the management of patients with supraventricular tachycardia
  (atrial flutter, junctional rhythms).
- PACE2013: 2013 ESC Guidelines on cardiac pacing (paced rhythm nomenclature).
- FRAMINGHAM1992: Sagie A et al., Am J Cardiol 1992 (linear QT correction, QT + 0.154 (1 - RR)).
- MEDGATE: an engineering choice of this project, documented here, not a published criterion.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    """One clinical cut-off: its value and unit, the source that defines it, and the knowledge
    base entry the resulting finding cites."""

    value: float
    unit: str
    source: str
    knowledge: str

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}"


# --- Rate and rhythm ------------------------------------------------------------------------
SINUS_BRADYCARDIA_BELOW = Threshold(60, "bpm", "AHA2007-I; BRADY2018", "ecg-sinus-bradycardia")
SINUS_TACHYCARDIA_ABOVE = Threshold(100, "bpm", "AHA2007-I", "ecg-sinus-tachycardia")
# Sinus P wave: frontal P axis roughly 0 to +75 degrees (AHA2007-I); we accept -30..+100 to
# tolerate axis estimation error on low-amplitude P waves (MEDGATE).
SINUS_P_AXIS_MIN = Threshold(-30, "deg", "AHA2007-I (0..+75) widened by MEDGATE",
                             "ecg-sinus-rhythm")
SINUS_P_AXIS_MAX = Threshold(100, "deg", "AHA2007-I (0..+75) widened by MEDGATE",
                             "ecg-sinus-rhythm")
# An organised P wave: median-beat P amplitude of at least 0.05 mV in the best limb lead, and
# a matching P wave before at least 80 % of the dominant beats (MEDGATE).
P_WAVE_MIN_AMPLITUDE = Threshold(0.05, "mV", "MEDGATE", "ecg-sinus-rhythm")
P_WAVE_MIN_CONSISTENCY = Threshold(0.8, "fraction of beats", "MEDGATE", "ecg-sinus-rhythm")
# Atrial fibrillation: irregularly irregular RR (AF2023). Irregularity = RMSSD / mean RR; sinus
# arrhythmia and isolated ectopy stay below 0.10 once premature beats are excluded (MEDGATE).
AF_RR_IRREGULARITY = Threshold(0.10, "RMSSD/mean RR", "AF2023 (definition); MEDGATE (value)",
                               "ecg-atrial-fibrillation")
AF_MIN_BEATS = Threshold(8, "beats", "MEDGATE", "ecg-atrial-fibrillation")
# P waves locked to the QRS: the fraction of dominant beats with an atrial event at the median PR
# (+-30 ms). Sinus rhythm locks them even where noise hides single P waves from the template
# match; fibrillatory waves never do (MEDGATE).
P_LOCK_TOLERANCE_MS = Threshold(30, "ms", "MEDGATE", "ecg-sinus-rhythm")
P_LOCKED_MIN = Threshold(0.8, "fraction of beats", "MEDGATE", "ecg-sinus-rhythm")
AF_MAX_P_LOCKED = Threshold(0.5, "fraction of beats", "AF2023 (no organised P waves); MEDGATE",
                            "ecg-atrial-fibrillation")
# Frequent premature complexes: at least this share of the beats (MEDGATE; Holter practice calls
# ectopy frequent from about 10 % of beats).
FREQUENT_ECTOPY_FRACTION = Threshold(0.1, "of beats", "MEDGATE", "ecg-premature-atrial-complex")
# Atrial flutter: regular atrial activity at 240-340/min without an isoelectric line (SVT2019);
# the QRS-blanked inferior leads and V1 repeat at one atrial cycle (autocorrelation, MEDGATE).
FLUTTER_MIN_CORRELATION = Threshold(0.6, "autocorrelation", "SVT2019 (regular atrial activity); "
                                    "MEDGATE (value)", "ecg-atrial-flutter")
FLUTTER_RATE_MIN = Threshold(240, "/min", "SVT2019", "ecg-atrial-flutter")
FLUTTER_RATE_MAX = Threshold(340, "/min", "SVT2019", "ecg-atrial-flutter")
# Junctional rhythm: regular narrow QRS without a P wave before it (or a retrograde P with PR
# < 120 ms); 40-60/min escape, 60-100/min accelerated (SVT2019; BRADY2018).
JUNCTIONAL_RATE_MAX = Threshold(60, "bpm", "BRADY2018; SVT2019", "ecg-junctional-rhythm")
ACCELERATED_JUNCTIONAL_RATE_MAX = Threshold(100, "bpm", "SVT2019", "ecg-junctional-rhythm")
REGULAR_RR_MAX = Threshold(0.05, "RMSSD/mean RR", "MEDGATE", "ecg-junctional-rhythm")
RETROGRADE_PR_BELOW = Threshold(120, "ms", "SVT2019", "ecg-junctional-rhythm")
# Paced rhythm: a stimulus leads at least half of the beats (PACE2013 nomenclature; MEDGATE).
PACED_MIN_FRACTION = Threshold(0.5, "of beats", "PACE2013; MEDGATE", "ecg-paced-rhythm")

# --- Conduction ------------------------------------------------------------------------------
PR_NORMAL_MIN = Threshold(120, "ms", "AHA2007-I", "ecg-pr-interval")
FIRST_DEGREE_AV_BLOCK_PR_ABOVE = Threshold(200, "ms", "AHA2007-I; BRADY2018",
                                           "ecg-first-degree-av-block")
# Second-degree block: a P wave on time (within 25 % of the atrial cycle) that conducts nothing,
# in a pause of at least 1.5 RR. Mobitz I: the PR after the pause is shorter than before it by
# >= 20 ms (progressive prolongation then reset); Mobitz II: the PR is the same (+-10 ms) before
# and after (BRADY2018 definitions; MEDGATE values).
DROPPED_BEAT_PAUSE_MIN = Threshold(1.5, "x median RR", "BRADY2018; MEDGATE",
                                   "ecg-second-degree-av-block-mobitz-1")
MOBITZ1_PR_SHORTENING_MIN = Threshold(20, "ms", "BRADY2018; MEDGATE",
                                      "ecg-second-degree-av-block-mobitz-1")
MOBITZ2_PR_CHANGE_MAX = Threshold(10, "ms", "BRADY2018; MEDGATE",
                                  "ecg-second-degree-av-block-mobitz-2")
# Third-degree block: regular P waves faster than a regular escape rhythm, with no fixed PR
# (BRADY2018): atrial rate >= 1.3 x ventricular, PR range > 80 ms, regular PP.
AV_DISSOCIATION_RATE_RATIO = Threshold(1.3, "atrial/ventricular rate", "BRADY2018; MEDGATE",
                                       "ecg-third-degree-av-block")
AV_DISSOCIATION_PR_RANGE = Threshold(80, "ms", "BRADY2018; MEDGATE", "ecg-third-degree-av-block")
# Regular atrial activity: at least 4 P waves and 80 % of the PP intervals at the atrial cycle
# (or twice it, a P wave hidden in a QRS) within 15 % (MEDGATE).
REGULAR_PP_MIN_FRACTION = Threshold(0.8, "of PP intervals", "MEDGATE",
                                    "ecg-third-degree-av-block")
QRS_NORMAL_MAX = Threshold(110, "ms", "AHA2009-III", "ecg-qrs-duration")
BUNDLE_BRANCH_BLOCK_QRS_MIN = Threshold(120, "ms", "AHA2009-III", "ecg-rbbb")
# Non-specific IVCD: QRS > 110 ms without the criteria of RBBB or LBBB (AHA2009-III).
IVCD_QRS_MIN = Threshold(110, "ms", "AHA2009-III (> 110 ms)", "ecg-ivcd")
# Incomplete RBBB: QRS 110-119 ms with the RBBB pattern (AHA2009-III).
INCOMPLETE_RBBB_QRS_MIN = Threshold(110, "ms", "AHA2009-III", "ecg-incomplete-rbbb")
# An R' (rsr', rsR', rSR') in V1 or V2: a positive deflection after the S wave, at least this tall
# (AHA2009-III describes the pattern; the 0.05 mV deflection size is MEDGATE's).
R_PRIME_MIN = Threshold(0.05, "mV", "AHA2009-III; MEDGATE (size)", "ecg-rbbb")
# RBBB: S wave in I and V6 longer than 40 ms (AHA2009-III); R-peak time in V5/V6 > 60 ms (LBBB).
RBBB_TERMINAL_S_MIN_MS = Threshold(40, "ms", "AHA2009-III", "ecg-rbbb")
LBBB_R_PEAK_TIME_V6_MIN = Threshold(60, "ms", "AHA2009-III", "ecg-lbbb")
# A q wave in I/V5/V6 deeper than this excludes LBBB (AHA2009-III "absent q"; depth MEDGATE).
LBBB_MAX_Q_DEPTH = Threshold(0.1, "mV", "AHA2009-III; MEDGATE (depth)", "ecg-lbbb")

# --- QT ----------------------------------------------------------------------------------------
QTC_PROLONGED_MALE = Threshold(450, "ms", "AHA2009-IV (>= 450 ms men)", "ecg-prolonged-qt")
QTC_PROLONGED_FEMALE = Threshold(460, "ms", "AHA2009-IV (>= 460 ms women)", "ecg-prolonged-qt")
# The statement uses the linear (Framingham) correction, as AHA2009-IV advises over Bazett. With
# QRS >= 120 ms the QT is first shortened by the QRS widening beyond 100 ms (AHA2009-IV asks for
# QRS adjustment; this subtraction is MEDGATE's, and the finding says so).
QT_WIDE_QRS_MIN = Threshold(120, "ms", "AHA2009-IV", "ecg-prolonged-qt")
QT_QRS_REFERENCE = Threshold(100, "ms", "MEDGATE", "ecg-prolonged-qt")

# --- Axis (frontal plane QRS axis, adults) ----------------------------------------------------
LEFT_AXIS_BELOW = Threshold(-30, "deg", "AHA2007-I; AHA2009-III", "ecg-left-axis-deviation")
RIGHT_AXIS_ABOVE = Threshold(90, "deg", "AHA2007-I; AHA2009-III", "ecg-right-axis-deviation")

# --- Voltage ---------------------------------------------------------------------------------
SOKOLOW_LYON_MIN = Threshold(3.5, "mV", "SOKOLOW1949; AHA2009-V", "ecg-lvh-voltage")
CORNELL_MALE_ABOVE = Threshold(2.8, "mV", "CASALE1985; AHA2009-V", "ecg-lvh-voltage")
CORNELL_FEMALE_ABOVE = Threshold(2.0, "mV", "CASALE1985; AHA2009-V", "ecg-lvh-voltage")
LOW_VOLTAGE_LIMB_BELOW = Threshold(0.5, "mV", "AHA2007-I", "ecg-low-voltage")
LOW_VOLTAGE_PRECORDIAL_BELOW = Threshold(1.0, "mV", "AHA2007-I", "ecg-low-voltage")

# --- ST segment (UDMI4: new J-point elevation in two contiguous leads) -------------------------
STE_OTHER_LEADS = Threshold(0.1, "mV", "UDMI4", "ecg-st-elevation-inferior")
STE_V2V3_MEN_40_PLUS = Threshold(0.2, "mV", "UDMI4 (men >= 40 y)", "ecg-st-elevation-anterior")
STE_V2V3_MEN_UNDER_40 = Threshold(0.25, "mV", "UDMI4 (men < 40 y)", "ecg-st-elevation-anterior")
STE_V2V3_WOMEN = Threshold(0.15, "mV", "UDMI4 (women)", "ecg-st-elevation-anterior")
STD_MIN = Threshold(0.05, "mV", "UDMI4 (horizontal or downsloping, two contiguous leads)",
                    "ecg-st-depression")
# Downsloping or horizontal: the ST level 60 ms after J is no higher than at J plus this margin.
STD_MAX_UPSLOPE = Threshold(0.02, "mV", "MEDGATE", "ecg-st-depression")

ST_TERRITORIES: dict[str, dict[str, object]] = {
    # territory -> leads, contiguous pairs (UDMI4 lead groups), knowledge id
    "inferior": {"leads": ("II", "III", "aVF"), "pairs": (("II", "aVF"), ("aVF", "III")),
                 "knowledge": "ecg-st-elevation-inferior"},
    "septal": {"leads": ("V1", "V2"), "pairs": (("V1", "V2"),),
               "knowledge": "ecg-st-elevation-septal"},
    "anterior": {"leads": ("V3", "V4"), "pairs": (("V3", "V4"),),
                 "knowledge": "ecg-st-elevation-anterior"},
    "lateral": {"leads": ("I", "aVL", "V5", "V6"), "pairs": (("aVL", "I"), ("V5", "V6")),
                "knowledge": "ecg-st-elevation-lateral"},
}
# Contiguity for ST depression: the Cabrera limb sequence and the precordial sequence.
CONTIGUOUS_SEQUENCES: tuple[tuple[str, ...], ...] = (
    ("aVL", "I", "II", "aVF", "III"),
    ("V1", "V2", "V3", "V4", "V5", "V6"),
)

# --- Ectopy ----------------------------------------------------------------------------------
# A beat is premature when its RR is shorter than 80 % of the local mean RR of its neighbours
# (MEDGATE; the common 20 % prematurity rule of Holter analysis). It is ventricular when its QRS
# is >= 120 ms or its shape differs from the dominant beat (correlation < 0.8), else atrial.
PREMATURE_RR_FRACTION = Threshold(0.8, "of local mean RR", "MEDGATE",
                                  "ecg-premature-atrial-complex")
PVC_QRS_MIN = Threshold(120, "ms", "AHA2009-III (wide complex)",
                        "ecg-premature-ventricular-complex")
PVC_MAX_CORRELATION = Threshold(0.8, "correlation with dominant QRS", "MEDGATE",
                                "ecg-premature-ventricular-complex")
# ...and, when it is judged wide, at least this much wider than the dominant QRS (a bundle branch
# block's beats are all wide; an ectopic one is wider still) (MEDGATE).
PVC_QRS_WIDER_BY = Threshold(20, "ms", "MEDGATE", "ecg-premature-ventricular-complex")

# --- Signal quality ----------------------------------------------------------------------------
QUALITY_ADEQUATE_MIN = Threshold(0.5, "1", "MEDGATE", "ecg-signal-quality")


def all_thresholds() -> dict[str, Threshold]:
    """Every threshold of this module by name (for docs and tests)."""
    return {k: v for k, v in globals().items() if isinstance(v, Threshold)}


def qtc_threshold(sex: str | None) -> tuple[Threshold, bool]:
    """The QTc cut-off for ``sex`` and whether sex was known. Unknown sex uses the female
    (higher) cut-off; values between the two cut-offs are then reported as uncertain."""
    if sex == "M":
        return QTC_PROLONGED_MALE, True
    if sex == "F":
        return QTC_PROLONGED_FEMALE, True
    return QTC_PROLONGED_FEMALE, False


def cornell_threshold(sex: str | None) -> tuple[Threshold, bool]:
    """The Cornell voltage cut-off for ``sex``; unknown sex uses the male (higher) one."""
    if sex == "F":
        return CORNELL_FEMALE_ABOVE, True
    if sex == "M":
        return CORNELL_MALE_ABOVE, True
    return CORNELL_MALE_ABOVE, False


def ste_threshold(lead: str, sex: str | None, age: float | None) -> tuple[Threshold, Threshold]:
    """The ST-elevation cut-off for ``lead``, as (applied, most sensitive possible).

    The two differ only in V2-V3 when sex or age is unknown: the highest cut-off is applied and
    a value between the two is reported as uncertain.
    """
    if lead not in ("V2", "V3"):
        return STE_OTHER_LEADS, STE_OTHER_LEADS
    if sex == "F":
        return STE_V2V3_WOMEN, STE_V2V3_WOMEN
    if sex == "M" and age is not None:
        t = STE_V2V3_MEN_40_PLUS if age >= 40 else STE_V2V3_MEN_UNDER_40
        return t, t
    if sex == "M":
        return STE_V2V3_MEN_UNDER_40, STE_V2V3_MEN_40_PLUS
    return STE_V2V3_MEN_UNDER_40, STE_V2V3_WOMEN
