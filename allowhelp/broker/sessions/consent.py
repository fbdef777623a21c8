"""What the broker asks the PC user and how it records their answer, without I/O.

The prompt's text is built from the session alone (organisation, the
technician's full name, the kind, the reason, the verification phrase), and
the consent record keeps the prompt as shown, the scope, how it was answered
and how long it took.
"""

from __future__ import annotations

from allowhelp.broker.errors import BadRequest
from allowhelp.broker.model.session import Session
from allowhelp.protocol.control import ConsentDecision, ConsentRequest
from allowhelp.protocol.text import plain_text

MAX_REASON = 500


def clean_reason(reason: object) -> str:
    """The technician's reason as the user will read it, or why it is refused."""
    if not isinstance(reason, str):
        raise BadRequest("reason must be a string")
    kept = plain_text(reason, MAX_REASON + 1)
    if not kept:
        raise BadRequest("say why you need access (reason)")
    if len(kept) > MAX_REASON:
        raise BadRequest(f"the reason is longer than {MAX_REASON} characters")
    return kept


def clean_text(value: object, name: str, limit: int, *, multiline: bool = False) -> str:
    """Optional free text a technician gives (ticket, notes): plain, bounded, or why not.

    ``multiline`` keeps line breaks (notes); everything else is made plain."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", code=f"bad_{name}")
    if len(value) > limit:
        raise BadRequest(f"the {name} is longer than {limit} characters", code=f"bad_{name}")
    if multiline:
        return "\n".join(plain_text(line, limit) for line in value.splitlines())
    return plain_text(value, limit)


def consent_request(session: Session, *, organisation: str, timeout: float) -> ConsentRequest:
    return ConsentRequest(
        session_id=session.id,
        organisation=organisation,
        technician=session.technician_name,
        kind=session.kind,
        reason=session.reason,
        phrase=session.phrase,
        timeout=timeout,
        help_code=session.help_code,
        chat=True,
        monitor=session.monitor if session.kind == "screen" else "",
        view_only=session.kind == "files" and session.view_only,
    )


def decision_details(session: Session, decision: ConsentDecision) -> dict[str, object]:
    """What ``consent.granted`` / ``consent.denied`` records about the answer."""
    return {
        "prompt": decision.prompt,
        "decision": "granted" if decision.granted else "denied",
        "via": decision.via,
        "seconds_to_decide": decision.elapsed,
        "scope": session.kind + (" view-only" if decision.view_only or session.view_only else ""),
    }
