"""The broker's SSH client takes nothing from the operator's home folder.

asyncssh reads ``~/.ssh/config``, ``~/.ssh/ca-bundle.crt`` and ``~/.ssh/crt`` by
default. A service user's HOME may not be readable (``serve`` then crashed with
``Permission denied: ~/.ssh/crt``), and an operator's SSH config is not the
broker's: here HOME holds both, and the options the broker builds for every
tunnel take neither.
"""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from allowhelp.broker.tunnel.sshclient import client_options


def test_home_ssh_files_do_not_reach_the_tunnel_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssh = tmp_path / ".ssh"
    (ssh / "crt").mkdir(parents=True)
    (ssh / "config").write_text("Host *\n  RekeyLimit 1K 7s\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    options = client_options(asyncssh.generate_private_key("ssh-ed25519"), asyncssh.SSHClient)
    assert options.rekey_bytes > 1024 and options.rekey_seconds != 7
    assert not options.x509_trusted_cert_paths
    assert options.x509_trusted_certs is None
