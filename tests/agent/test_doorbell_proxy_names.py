"""A proxy or node name the resolver cannot spell (IDNA: an empty label as in
``proxy..example``, a label over 63 characters) is a failed try of the doorbell, as
an unreachable proxy is: logged, and dialled again after the backoff; the doorbell
goes on. Python's ``socket`` raises ``UnicodeError`` (a ``ValueError``) for such a
name, not the ``OSError`` of a name that is merely unknown. The real ``Doorbell``,
its real dial; nothing listens anywhere (the name never gets that far). A proxy
setting that fails so for the enrolled broker's names stops the doorbell at its
start instead (``test_doorbell_proxy_setting.py``); its dial still holds for a node
learned later."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from allowhelp.agent.config import AgentConfig
from allowhelp.agent.doorbellkey import SavedKey
from allowhelp.agent.doorbellloop import Doorbell

AGENT_ID = "a-names"
LONG_LABEL = "a" * 64


@pytest.mark.parametrize(
    ("url", "configured", "environment"),
    [
        ("https://127.0.0.1:1", "http://proxy..example:3128", ""),  # agent.json (proxy)
        ("https://127.0.0.1:1", "", f"http://{LONG_LABEL}.example:3128"),  # https_proxy
        ("https://node..example:443", "direct", ""),  # a node's own name, no proxy
    ],
)
def test_a_name_that_cannot_be_spelled_is_a_failed_try(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    url: str,
    configured: str,
    environment: str,
) -> None:
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    if environment:
        monkeypatch.setenv("https_proxy", environment)
    config = AgentConfig(url, "", "", "", 0, "", AGENT_ID, "org", "", proxy=configured)
    bell = Doorbell(tmp_path, config, ["false"], {})
    request.addfinalizer(bell.close)
    before = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert not bell._dial(SavedKey(AGENT_ID, "T" * 43))  # no exception: a failed try
    assert bell.stream is None
    assert bell.attempts == 1
    assert bell.next_dial > before  # again after the backoff, not at once
    tried = [r.getMessage() for r in caplog.records if "cannot ring" in r.getMessage()]
    assert len(tried) == 1, caplog.text
    assert "not a valid" in tried[0], tried[0]
    assert "again in" in tried[0], tried[0]
