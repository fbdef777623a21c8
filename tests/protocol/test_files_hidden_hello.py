"""A Hello's ``files_hidden`` (the agent's own folders, never reached by a files
session): what the agent sends, what the broker takes, and what it refuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from allowhelp.agent.hello import current_hello, hidden_folder
from allowhelp.broker.audit.entry import make_entry
from allowhelp.broker.sessions.fileshidden import hidden_by, shown
from allowhelp.broker.tunnel.agents import LiveAgent
from allowhelp.protocol.control import Hello, decode, hello_from
from allowhelp.protocol.control_limits import LIMITS, MAX_HIDDEN
from allowhelp.protocol.hostile_json import ProtocolError

BASE = {"type": "hello", "hostname": "pc1", "os": "Debian", "user": "ana", "version": "1"}


def line(**fields: object) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def test_a_hello_without_it_hides_nothing() -> None:
    hello = decode(line())
    assert isinstance(hello, Hello) and hello.files_hidden == ()


def test_a_hello_names_its_folders_and_the_broker_keeps_them() -> None:
    folders = ["/home/ana/.config/allowhelp/agent", "/"]
    hello = decode(line(files_hidden=folders))
    assert isinstance(hello, Hello) and hello.files_hidden == tuple(folders)
    live = LiveAgent("agent-1", None, "peer")
    live.said(hello)
    assert live.files_hidden == tuple(folders)
    live.said(Hello("pc1", "Debian", "ana", "1"))  # a later Hello says none: none kept
    assert live.files_hidden == ()


LONG = "/" + "a" * LIMITS["files_hidden"]


@pytest.mark.parametrize(
    "value",
    [
        "/home/ana",  # not a list
        {"/home/ana": True},
        [1],
        [None],
        [["/home/ana"]],
        [""],
        ["home/ana"],  # not absolute
        ["./agent"],
        ["/home/ana/"],  # not normal
        ["//home/ana"],
        ["/home/ana/../bob"],
        ["/home/./ana"],
        ["/home//ana"],
        ["/home/a\x00na"],
        [LONG],
        ["/x"] * (MAX_HIDDEN + 1),
    ],
)
def test_a_malformed_list_is_refused_like_any_bad_hello(value: object) -> None:
    with pytest.raises(ProtocolError, match="files_hidden"):
        decode(line(files_hidden=value))
    with pytest.raises(ProtocolError, match="files_hidden"):  # the doorbell's body too
        hello_from({**BASE, "files_hidden": value})


def test_the_bounds_themselves_are_taken() -> None:
    most = [f"/f{i}" for i in range(MAX_HIDDEN)]
    hello = decode(line(files_hidden=most))
    assert isinstance(hello, Hello) and len(hello.files_hidden) == MAX_HIDDEN
    longest = LONG[:-1]
    hello = decode(line(files_hidden=[longest]))
    assert isinstance(hello, Hello) and hello.files_hidden == (longest,)


def test_what_is_hidden_is_the_folder_and_all_it_holds() -> None:
    hidden = ("/home/ana/.config/allowhelp/agent",)
    assert hidden_by(b"/home/ana/.config/allowhelp/agent", hidden) == hidden[0]
    assert hidden_by(b"/home/ana/.config/allowhelp/agent/host_key", hidden) == hidden[0]
    assert hidden_by(b"/home/ana/.config/allowhelp/agent/a/b", hidden) == hidden[0]
    assert hidden_by(b"/home/ana/.config/allowhelp/agent2", hidden) is None
    assert hidden_by(b"/home/ana/.config/allowhelp", hidden) is None
    assert hidden_by(b"/home/ana", hidden) is None
    assert hidden_by(b"/etc/passwd", ("/",)) == "/"
    assert hidden_by(b"/anything", ()) is None


def test_the_agent_sends_its_folders_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real" / "agent"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert hidden_folder(tmp_path / "link" / "agent") == os.path.realpath(real)
    hello = current_hello(tmp_path / "link" / "agent")
    assert hello.files_hidden == (os.path.realpath(real),)
    again = decode(hello.encode())  # what the broker takes is what was sent
    assert isinstance(again, Hello) and again.files_hidden == hello.files_hidden
    assert current_hello().files_hidden == ()


def test_a_folder_the_hello_cannot_carry_hides_its_parent_instead(tmp_path: Path) -> None:
    base = os.path.realpath(tmp_path)
    odd = os.fsdecode(os.path.join(os.fsencode(base), b"caf\xe9"))  # not UTF-8
    assert hidden_folder(Path(odd, "agent")) == base
    deep = Path(base, *["d" * 200] * 6, "agent")  # longer than a Hello takes
    shown = hidden_folder(deep)
    assert len(shown) <= LIMITS["files_hidden"] and str(deep).startswith(shown + "/")
    decode(line(files_hidden=[shown]))


def test_a_case_insensitive_spelling_is_hidden_too() -> None:
    # realpath keeps the request's spelling on SMB/CIFS, vfat/exFAT/ntfs3, ext4 casefold
    hidden = ("/home/Ana/.config/allowhelp/agent",)
    assert hidden_by(b"/home/Ana/.CONFIG/allowhelp/agent/host_key", hidden) == hidden[0]
    assert hidden_by(b"/HOME/ana/.Config/AllowHelp/AGENT", hidden) == hidden[0]
    assert hidden_by(b"/home/ana/.config/ALLOWHELP/agent/a/b", hidden) == hidden[0]
    assert hidden_by(b"/home/ana/.CONFIG/allowhelp/agent2", hidden) is None
    assert hidden_by(b"/home/ana/.CONFIG/allowhelp", hidden) is None
    assert hidden_by(b"/home/ana/.config/allowhelp/agent/caf\xe9", hidden) == hidden[0]


def test_a_home_that_is_not_utf8_is_refused_and_recordable() -> None:
    """A home whose name is not UTF-8 (``/home/m\\xfcller``): the folder is matched as
    the PC spells it, and the refusal's record can be written (a lone surrogate in its
    details would fail the record, and the refusal would be a 500)."""
    folder = b"/home/m\xfcller/.config/allowhelp/agent".decode("utf-8", "surrogateescape")
    assert hidden_by(b"/home/m\xfcller/.config/allowhelp/agent/host_key", [folder]) == folder
    entry = make_entry("files.refused", "technician:t", "s", {"hidden": shown(folder)})
    assert entry.details["hidden"] == "/home/m\ufffdller/.config/allowhelp/agent"
    with pytest.raises(TypeError, match="surrogates not allowed"):  # as it was
        make_entry("files.refused", "technician:t", "s", {"hidden": folder})
