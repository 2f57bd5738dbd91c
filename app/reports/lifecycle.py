"""The report state machine (DESIGN.md "Report lifecycle").

Each transition is named by the action that causes it. Anything not listed is illegal; the API
answers 409 and names the actions that are allowed from the current state.

An AI draft that arrives after a person wrote the current version (state ``edited``) does not
change the state: it is kept as a proposed version, and ``adopt`` / ``dismiss`` are offered
only while such a proposal is pending.
"""

from __future__ import annotations

STATES = ("pending", "draft", "edited", "final", "amended", "corrected", "cancelled",
          "entered_in_error")

# FHIR R4 DiagnosticReport.status for each state.
FHIR_STATUS = {"pending": "registered", "draft": "preliminary", "edited": "preliminary",
               "final": "final", "amended": "amended", "corrected": "corrected",
               "cancelled": "cancelled", "entered_in_error": "entered-in-error"}

# DICOM SR VerificationFlag for exported results.
SR_VERIFICATION = {"draft": "UNVERIFIED", "edited": "UNVERIFIED", "final": "VERIFIED",
                   "amended": "VERIFIED", "corrected": "VERIFIED"}

SIGNED = ("final", "amended", "corrected")

# (state, action) -> next state
TRANSITIONS: dict[tuple[str, str], str] = {
    ("pending", "draft"): "draft",
    ("draft", "draft"): "draft",        # the model re-drafts after new instances
    ("edited", "draft"): "edited",      # ... after an edit it only proposes (never overwrites)
    ("pending", "edit"): "edited",      # written by hand before (or without) an AI draft
    ("draft", "edit"): "edited",
    ("edited", "edit"): "edited",
    ("draft", "sign"): "final",
    ("edited", "sign"): "final",
    **{(s, "amend"): "amended" for s in SIGNED},
    **{(s, "correct"): "corrected" for s in SIGNED},
    **{(s, "withdraw"): "entered_in_error"
       for s in ("pending", "draft", "edited", *SIGNED)},
    ("pending", "cancel"): "cancelled",
    ("draft", "cancel"): "cancelled",
    ("edited", "cancel"): "cancelled",
    ("edited", "adopt"): "draft",       # the proposed AI text becomes current
    ("edited", "dismiss"): "edited",    # the clinician's text stays; the proposal is set aside
}


class IllegalTransition(Exception):
    def __init__(self, state: str, action: str, proposal: bool = False) -> None:
        self.state = state
        self.action = action
        self.allowed = allowed_actions(state, proposal=proposal)
        why = ("while no AI proposal is pending" if action in PROPOSAL_ACTIONS and not proposal
               else f"a report in state {state!r}")
        super().__init__(f"cannot {action} {why}; allowed: "
                         f"{', '.join(self.allowed) or 'none'}")


# Actions only the pipeline takes (a new AI draft); never offered to a person.
SYSTEM_ACTIONS = frozenset({"draft"})
# Actions on a proposed AI draft; offered only while one is pending.
PROPOSAL_ACTIONS = frozenset({"adopt", "dismiss"})


def allowed_actions(state: str, proposal: bool = False) -> list[str]:
    """What a person may do next; each has its endpoint under /api/v1/reports/{id}
    (``edit`` is PATCH on the report, every other action a POST to ``.../{action}``)."""
    hidden = SYSTEM_ACTIONS if proposal else SYSTEM_ACTIONS | PROPOSAL_ACTIONS
    return sorted({a for (s, a) in TRANSITIONS if s == state} - hidden)


def next_state(state: str, action: str, proposal: bool = False) -> str:
    """The state ``action`` leads to; ``proposal``: an AI proposal is pending."""
    if action in PROPOSAL_ACTIONS and not proposal:
        raise IllegalTransition(state, action, proposal)
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        raise IllegalTransition(state, action, proposal) from None
