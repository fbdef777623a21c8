"""The PC's side of fleet jobs, in process: real signatures, real files, real /bin/sh.

Every rule that keeps a job from running is tried here with a job that breaks
only that rule: a signature by another key, a payload changed after signing,
a job for another PC, an expired job, no opt-in, an action not allowed, a
policy file others could change, a policy that is not TOML.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from allowhelp.agent import jobs as jobs_module
from allowhelp.agent.config import write_private
from allowhelp.agent.consent import Grant
from allowhelp.agent.fleetpolicy import FleetPolicy
from allowhelp.agent.history import History, SessionHistory, describe
from allowhelp.agent.jobs import JobKeeper
from allowhelp.certs.jobsign import JOB_CONTEXT, JobSigner, job_signature_ok
from allowhelp.certs.sshkeys import public_key_line
from allowhelp.protocol.control import JobResult, JobRun, Message, decode
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.jobs import JobSpec

AGENT = "a-thispcthispcthispc"
OTHER = "a-anotherpcanotherpcx"


def key(path: Path) -> tuple[JobSigner, str]:
    made = asyncssh.generate_private_key("ssh-ed25519")
    path.write_bytes(made.export_private_key("openssh"))
    return JobSigner.load(path), public_key_line(made)


def spec(folder: Path, **changes: object) -> JobSpec:
    now = time.time()
    base = JobSpec(
        job_id="j-0123456789abcdef",
        agent_id=AGENT,
        action="script",
        reason="test",
        issuer="root-admin",
        created=now,
        expires=now + 60,
        timeout=10,
        script=f"echo ran >> {folder}/tally\nid -u",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run_message(signer: JobSigner, job: JobSpec) -> JobRun:
    return JobRun(job_id=job.job_id, payload=job.encoded(), signature=signer.sign(job.payload()))


def policy(folder: Path, text: str, mode: int = 0o600) -> None:
    path = folder / "policy.toml"
    path.write_text(text)
    path.chmod(mode)


OPTED_IN = '[fleet]\nenabled = true\nallow = ["script"]\n'


async def answer(keeper: JobKeeper, message: JobRun) -> JobResult:
    said: list[Message] = []
    keeper.attach(said.append)
    keeper.received(message)
    for _ in range(200):
        if said:
            break
        await asyncio.sleep(0.05)
    result = said[0]
    assert isinstance(result, JobResult)
    # it crosses the real protocol: the broker decodes exactly this line
    decoded = decode(result.encode().rstrip(b"\n"))
    assert decoded == result
    return result


@pytest.fixture
def pc(tmp_path: Path) -> tuple[Path, JobSigner, JobKeeper]:
    signer, public = key(tmp_path / "tunnel_key")
    keeper = JobKeeper(
        tmp_path, agent_id=AGENT, broker_key=public, history=History(tmp_path / "history.jsonl")
    )
    return tmp_path, signer, keeper


async def test_a_signed_job_for_this_pc_runs_once(pc: tuple[Path, JobSigner, JobKeeper]) -> None:
    folder, signer, keeper = pc
    policy(folder, OPTED_IN)
    message = run_message(signer, spec(folder))
    first = await answer(keeper, message)
    assert first.state == "succeeded" and first.exit_code == 0
    assert first.output.strip() == str(os.geteuid())
    again = await answer(keeper, message)  # the broker resends: same answer, not run again
    assert again == first
    assert (folder / "tally").read_text() == "ran\n"


async def test_no_job_runs_when_its_mark_cannot_be_kept(
    pc: tuple[Path, JobSigner, JobKeeper], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the "interrupted" mark is not written, so the job does not run
    (a resend after a lost answer would run it a second time); once the disk has
    room, the same job runs, once."""
    folder, signer, keeper = pc
    policy(folder, OPTED_IN)

    def disk_full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jobs_module, "write_private", disk_full)
    message = run_message(signer, spec(folder))
    refused = await answer(keeper, message)
    assert refused.state == "refused" and "could run twice" in refused.output
    assert "No space left on device" in refused.output
    assert not (folder / "tally").exists()
    monkeypatch.setattr(jobs_module, "write_private", write_private)
    assert (await answer(keeper, message)).state == "succeeded"
    assert (await answer(keeper, message)).state == "succeeded"
    assert (folder / "tally").read_text() == "ran\n"


async def test_a_damaged_record_refuses_every_job_and_is_left_for_the_admin(
    pc: tuple[Path, JobSigner, JobKeeper],
) -> None:
    """What ran is not forgotten: a ``jobs.json`` that cannot be read is not replaced
    by an empty one (a job it names would run again); every job is refused, saying
    why, until the PC's admin repairs or removes it."""
    folder, signer, keeper = pc
    policy(folder, OPTED_IN)
    damaged = b'{"j-0123456789abcdef": {"job_id": "j-01'
    (folder / "jobs.json").write_bytes(damaged)
    refused = await answer(keeper, run_message(signer, spec(folder)))
    assert refused.state == "refused" and "repair or remove it" in refused.output
    assert not (folder / "tally").exists()
    assert (folder / "jobs.json").read_bytes() == damaged


@pytest.mark.parametrize(
    "breaks",
    ["another_key", "payload_changed", "other_pc", "other_job_id", "garbage_signature"],
)
async def test_a_job_not_signed_for_this_pc_is_refused(
    pc: tuple[Path, JobSigner, JobKeeper], breaks: str
) -> None:
    folder, signer, keeper = pc
    policy(folder, OPTED_IN)
    job = spec(folder)
    message = run_message(signer, job)
    if breaks == "another_key":
        rogue, _ = key(folder / "rogue_key")
        message = run_message(rogue, job)
    elif breaks == "payload_changed":
        changed = replace(job, script=f"echo evil >> {folder}/tally")
        message = replace(message, payload=changed.encoded())
    elif breaks == "other_pc":
        message = run_message(signer, replace(job, agent_id=OTHER))
    elif breaks == "other_job_id":
        message = replace(message, job_id="j-fedcba9876543210")
    else:
        message = replace(message, signature="A" * 86 + "==")
    result = await answer(keeper, message)
    assert result.state == "refused", result
    assert not (folder / "tally").exists()
    assert not (folder / "jobs.json").exists()  # a forged job claims no id


async def test_an_expired_job_is_not_run(pc: tuple[Path, JobSigner, JobKeeper]) -> None:
    folder, signer, keeper = pc
    policy(folder, OPTED_IN)
    result = await answer(keeper, run_message(signer, spec(folder, expires=time.time() - 1)))
    assert result.state == "expired"
    assert not (folder / "tally").exists()


@pytest.mark.parametrize(
    ("text", "mode", "why"),
    [
        (None, 0o600, "no fleet policy"),
        ('[fleet]\nenabled = false\nallow = ["script"]\n', 0o600, "not enabled"),
        ('[fleet]\nenabled = true\nallow = ["packages"]\n', 0o600, "does not allow script"),
        (OPTED_IN, 0o622, "changed by others"),
        ("[fleet\nenabled = true", 0o600, "not valid TOML"),
        ("[fleet]\nenable = true\n", 0o600, "unknown setting"),
        ('[fleet]\nenabled = "yes"\n', 0o600, "true or false"),
    ],
)
async def test_without_a_clear_opt_in_nothing_runs(
    pc: tuple[Path, JobSigner, JobKeeper], text: str | None, mode: int, why: str
) -> None:
    folder, signer, keeper = pc
    if text is not None:
        policy(folder, text, mode)
    result = await answer(keeper, run_message(signer, spec(folder)))
    assert result.state == "refused"
    assert why in result.output
    assert not (folder / "tally").exists()


def test_a_policy_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.toml"
    real.write_text(OPTED_IN)
    real.chmod(0o600)
    (tmp_path / "policy.toml").symlink_to(real)
    assert FleetPolicy.load(tmp_path).refusal("script")


def test_signatures_are_bound_to_their_context(tmp_path: Path) -> None:
    signer, public = key(tmp_path / "k")
    job = spec(tmp_path)
    good = signer.sign(job.payload())
    assert job_signature_ok(public, job.payload(), good)
    assert not job_signature_ok(public, job.payload() + b" ", good)
    # the same key's signature over the bare payload (no context) is no job signature
    private = serialization.load_ssh_private_key((tmp_path / "k").read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    bare = base64.b64encode(private.sign(job.payload())).decode()
    assert not job_signature_ok(public, job.payload(), bare)
    assert job_signature_ok(
        public, job.payload(), base64.b64encode(private.sign(JOB_CONTEXT + job.payload())).decode()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"action": "reboot"},
        {"install": ("vlc; rm -rf /",), "action": "packages", "script": ""},
        {"install": ("-o",), "action": "packages", "script": ""},
        {"timeout": 5},
        {"script": ""},
        {"agent_id": "../etc"},
        {"job_id": "x"},
    ],
)
def test_malformed_jobs_cannot_be_made(tmp_path: Path, change: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        spec(tmp_path, **change)


def test_a_payload_must_be_canonical(tmp_path: Path) -> None:
    job = spec(tmp_path)
    JobSpec.from_encoded(job.encoded())
    spaced = base64.b64encode(job.payload().replace(b",", b", ")).decode()
    with pytest.raises(ProtocolError):
        JobSpec.from_encoded(spaced)
    with pytest.raises(ProtocolError):
        JobSpec.from_encoded("not base64!")


def test_help_sessions_are_written_to_the_history(tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")
    sessions = SessionHistory(history)
    grant = Grant("s-0123456789", "admin-shell", False, "Tess Tech", owner=1000)
    sessions.active(grant)
    sessions.ended(grant.session_id)
    sessions.ended("s-never-granted")  # nothing to say of a request never allowed
    entries = history.read()
    assert [(e["state"], e["by"], e["kind"]) for e in entries] == [
        ("began", "Tess Tech", "admin-shell"),
        ("ended", "Tess Tech", "admin-shell"),
    ]
    assert describe(entries[0]).endswith("Tess Tech's admin-shell session began")
    assert (tmp_path / "history.jsonl").stat().st_mode & 0o777 == 0o644


def test_history_says_what_it_found_or_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from allowhelp.agent.cli import main

    assert main(["history", "--config", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["history", "--config", str(tmp_path)]) == 0
    assert "IT has done nothing" in capsys.readouterr().out
    History(tmp_path / "history.jsonl").add(
        {
            "what": "job",
            "summary": "installed vlc",
            "by": "root-admin",
            "state": "succeeded",
            "reason": "asked for it",
        }
    )
    with (tmp_path / "history.jsonl").open("a") as torn:
        torn.write("not json\n")  # a torn line is skipped
    assert main(["history", "--json", "--config", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["summary"] for e in listed] == ["installed vlc"]
    assert main(["history", "--config", str(tmp_path)]) == 0
    assert "IT (root-admin) installed vlc: succeeded — asked for it" in capsys.readouterr().out


def test_history_lines_carry_no_terminal_escapes() -> None:
    line = describe(
        {
            "time": 1_796_000_000,
            "what": "job",
            "summary": "ran a script",
            "state": "failed",
            "by": "admin\x1b]0;pwned\x07",
            "reason": "fix\x1b[2Jit",
        }
    )
    assert "\x1b" not in line and "\x07" not in line
    assert "IT (admin]0;pwned) ran a script: failed — fix[2Jit" in line
