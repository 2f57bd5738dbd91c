"""The report state machine (DESIGN.md "Report lifecycle").

Each transition is named by the action that causes it. Anything not listed is illegal; the API
answers 409 and names the actions that are allowed from the current state.
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
    ("edited", "draft"): "draft",
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
}


class IllegalTransition(Exception):
    def __init__(self, state: str, action: str) -> None:
        self.state = state
        self.action = action
        self.allowed = allowed_actions(state)
        super().__init__(f"cannot {action} a report in state {state!r}; allowed: "
                         f"{', '.join(self.allowed) or 'none'}")


# Actions only the pipeline takes (a new AI draft); never offered to a person.
SYSTEM_ACTIONS = frozenset({"draft"})


def allowed_actions(state: str) -> list[str]:
    """What a person may do next; each has its endpoint under /api/v1/reports/{id}."""
    return sorted({a for (s, a) in TRANSITIONS if s == state} - SYSTEM_ACTIONS)


def next_state(state: str, action: str) -> str:
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        raise IllegalTransition(state, action) from None
