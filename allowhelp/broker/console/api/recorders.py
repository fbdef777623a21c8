"""The recordings of a session's relays: opened once, by the owner's relay (#18).

A shell's recording is its owner's relay's (an invitee's keys come back as the
shell's echo). A screen session has one recording, holding the PC's stream as
the owner's viewer got it and every person's input under their own name: the
owner's relay opens it, and a control invitee's (who may attach only while the
owner's relay is attached: ``InviteDesk.claim``) adds to it; it is sealed when
the session ends (the owner's relay stops, or ``InviteDesk`` closes it before the
end record if an invitee's relay still holds it).
"""

from __future__ import annotations

from allowhelp.broker.audit.recording import RecordingLimits, StopHook, Stopped, open_recording
from allowhelp.broker.audit.rfb_format import FORMAT, SUFFIX
from allowhelp.broker.audit.rfb_recording import RfbRecorder
from allowhelp.broker.console.services import Services
from allowhelp.broker.errors import RelayError
from allowhelp.broker.model.session import Session


def stop_auditor(svc: Services, session: Session, recording: str) -> StopHook:
    async def audit_stop(stopped: Stopped) -> None:
        # The session goes on unrecorded (the relay shows nothing more until this
        # is committed); the end record says the recording is truncated.
        await svc.audit.write(
            "recording.stopped",
            actor="system",
            target=session.id,
            details={**session.summary(), "recording": recording, **stopped.details()},
        )

    return audit_stop


def recording_limits(svc: Services) -> RecordingLimits:
    settings = svc.settings
    return RecordingLimits(settings.recording_max, settings.recordings_min_free, settings.data_dir)


def screen_recorder(svc: Services, session: Session) -> RfbRecorder:
    """The session's screen recording: the one already open, or a new one; raises
    ``RelayError`` when it cannot be recorded at all (no screen goes unrecorded)."""
    name = f"{session.id}{SUFFIX}"
    found = open_recording(name)
    if isinstance(found, RfbRecorder) and not found.closed:
        return found
    meta: dict[str, object] = {
        "format": FORMAT,
        "session": session.id,
        "hostname": session.hostname,
        "technician": session.technician,
        "view_only": session.view_only,
        "rfb": "003.008",
    }
    try:
        return RfbRecorder(
            svc.settings.recordings_dir,
            session.id,
            meta,
            limits=recording_limits(svc),
            on_stop=stop_auditor(svc, session, name),
        )
    except OSError as exc:
        raise RelayError(f"the screen cannot be recorded: {exc.strerror or exc}") from exc
