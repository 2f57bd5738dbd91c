"""View of each image and the choice of the frontal image for report generation."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from models.cxr.views import FRONTAL, LATERAL, select_views, view_of
from tests.conftest import shared_file

PA, LAT = Path("study/1.dcm"), Path("study/2.dcm")


def test_two_image_study_by_view_position_uses_pa_and_lists_the_lateral():
    chosen = select_views([(LAT, {"ViewPosition": "LATERAL"}), (PA, {"ViewPosition": "PA"})])
    assert chosen.frontal == PA and chosen.frontal_view == "PA" and chosen.lateral == [LAT]
    assert chosen.reason == ("Frontal PA image (View Position) used for report generation; "
                             "1 lateral image not used by the model.")
    assert chosen.views == [(LAT, "LAT", "ViewPosition"), (PA, "PA", "ViewPosition")]


def test_two_image_study_by_view_code_sequence_only():
    # PS3.16 CID 4010 DX View: antero-posterior SCT 399348003, left lateral SCT 399173006.
    ap = {"ViewCodeSequence": [{"CodeValue": "399348003", "CodingSchemeDesignator": "SCT",
                                "CodeMeaning": "antero-posterior"}]}
    ll = {"ViewCodeSequence": [{"CodeValue": "399173006", "CodingSchemeDesignator": "SCT",
                                "CodeMeaning": "left lateral"}]}
    chosen = select_views([(LAT, ll), (PA, ap)])
    assert (chosen.frontal, chosen.frontal_view, chosen.lateral) == (PA, "AP", [LAT])
    assert chosen.reason.startswith("Frontal AP image (View Code Sequence) used")


def test_legacy_snomed_rt_view_codes_are_recognised():
    assert view_of({"ViewCodeSequence": [{"CodeValue": "R-10214"}]}) == ("PA", "ViewCodeSequence")
    assert view_of({"ViewCodeSequence": [{"CodeValue": "R-10232"}]}) == ("RL", "ViewCodeSequence")
    item = Dataset()  # a pydicom item, meaning only
    item.CodeMeaning = "postero-anterior"
    assert view_of({"ViewCodeSequence": [item]}) == ("PA", "ViewCodeSequence")


def test_two_image_study_by_series_description_only():
    chosen = select_views([(LAT, {"SeriesDescription": "CHEST LAT"}),
                           (PA, {"SeriesDescription": "Chest PA erect"})])
    assert (chosen.frontal, chosen.lateral) == (PA, [LAT])
    assert "(series description)" in chosen.reason


def test_view_position_wins_over_code_and_description():
    header = {"ViewPosition": "AP", "SeriesDescription": "CHEST PA",
              "ViewCodeSequence": [{"CodeValue": "272479007"}]}
    assert view_of(header) == ("AP", "ViewPosition")


def test_description_naming_two_views_says_nothing():
    assert view_of({"SeriesDescription": "CHEST PA AND LAT"}) == ("", "none")
    assert view_of({"SeriesDescription": "MAPPING"}) == ("", "none")


def test_pa_is_preferred_over_an_earlier_ap():
    ap = Path("ap.dcm")
    chosen = select_views([(ap, {"ViewPosition": "AP"}), (PA, {"ViewPosition": "PA"})])
    assert chosen.frontal == PA and chosen.reason.endswith("; 1 other image not used.")


def test_without_a_frontal_the_first_image_is_used_and_the_reason_says_so():
    chosen = select_views([(LAT, {"ViewPosition": "LL"}), (PA, {})])
    assert chosen.frontal == LAT and chosen.frontal_view == "LL"
    assert chosen.reason.startswith("No image is marked frontal; the first image")
    assert select_views([]).frontal is None


def test_real_dx_header_has_no_view():
    ds = pydicom.dcmread(shared_file("cxr/dx_image.dcm"), stop_before_pixels=True)
    assert view_of(ds) == ("", "none")  # Series Description "CHEST", no View Position
    ds.ViewPosition = "RL"
    assert view_of(ds) == ("RL", "ViewPosition")


def test_view_groups():
    assert {"PA", "AP"} <= set(FRONTAL) and {"LL", "RL", "LAT"} <= set(LATERAL)
