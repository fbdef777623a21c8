"""Keystrokes typed in Chromium, alone: ``bench/run --only peers``'s last figure, narrower.

``python -m bench.browserkeys [--keys N] [--baseline REF] [--mesh-ping-storm] [--json FILE]``

The same measurement as ``bench.peers.browser`` (Debian's Chromium, each
product's own terminal page, keydown to the rendered echo on the page's clock),
without the rest of the peers run: a broker and agent of this tree, MeshCentral
and its agent, no busy screen. Series, interleaved batch by batch in one browser:

* ``allowhelp`` and ``meshcentral``, keys paced as a person types
  (``browser.PAUSE_S``, the same seeded draws for each series): the figure
  ``bench/run --only peers`` reports;
* the same two typed back to back, the next key the moment the echo showed: how
  the peers bench typed before §7e of docs/benchmarks.md;
* with ``--baseline REF``: ``allowhelp@REF``, paced, our terminal page with its
  script (``web/js/pages/terminal.js``) as it is at git ``REF`` (or the file
  ``REF`` names), on the same broker: a page change against its baseline in
  the same run.

``--mesh-ping-storm`` configures MeshCentral as the peers bench did before §7e
(``"agentPing": 0``: a relay ping every millisecond), to show what that did.
Nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from playwright.async_api import Page

from bench.common import ROOT, Procs, dump_json, log, machine, table
from bench.peers import browser
from bench.peers.run import _start_mesh
from bench.screen import Allowhelp
from bench.stack import Installation

SCRIPT = "/js/pages/terminal.js"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"browserkeys: git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def script_at(ref: str) -> tuple[str, str]:
    """(a label, ``web/js/pages/terminal.js``) at git ``ref``, or the file ``ref`` names."""
    if Path(ref).is_file():
        return Path(ref).name, Path(ref).read_text()
    commit = _git("rev-parse", "--short", f"{ref}^{{commit}}").strip()
    return commit, _git("show", f"{commit}:web{SCRIPT}")


async def _measure(
    stack: Allowhelp, mesh: tuple[Any, str], keys: int, baseline: tuple[str, str] | None
) -> tuple[dict[str, list[browser.Sample]], dict[str, str]]:
    why: dict[str, str] = {}
    sessions: list[str] = []
    async with browser.chromium() as chromium:
        try:
            ours, session_id = await browser.our_page(chromium, stack)
            sessions.append(session_id)
            theirs = await browser.their_page(chromium, *mesh)
            series: dict[str, tuple[Page, browser.Pause | None]] = {
                "allowhelp": (ours, browser.pacer()),
                "meshcentral": (theirs, browser.pacer()),
                "allowhelp back to back": (ours, None),
                "meshcentral back to back": (theirs, None),
            }
            if baseline is not None:
                ref, script = baseline
                page, session_id = await browser.our_page(chromium, stack, {SCRIPT: script})
                sessions.append(session_id)
                series[f"allowhelp@{ref}"] = (page, browser.pacer())
            samples = await browser.interleaved(series, keys, why)
        finally:
            for session_id in sessions:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(stack.end, session_id)
    return samples, why


def measure(keys: int, baseline: str | None, ping_storm: bool) -> dict[str, Any]:
    procs = Procs()
    script = script_at(baseline) if baseline else None
    with tempfile.TemporaryDirectory(prefix="allowhelp-browserkeys-") as tmp:
        root = Path(tmp)
        try:
            base = Installation.start(procs, root / "allowhelp")
            stack = Allowhelp(base.broker, base.agent, base.desk)
            try:
                server, node, _rss = _start_mesh(procs, root, "", ping_storm=ping_storm)
                try:
                    samples, why = asyncio.run(_measure(stack, (server, node), keys, script))
                finally:
                    server.stop()
            finally:
                stack.close()
        finally:
            procs.close()
    return {
        "keydown_to_rendered_echo_ms": {
            name: None if name in why else browser.summary(got) for name, got in samples.items()
        },
        "keys_per_series": keys,
        "pause_s": browser.PAUSE_S,
        "mesh_ping_storm": ping_storm,
        "notes": why,
        "per_key": {name: [s[0] for s in got] for name, got in samples.items()},
        "machine": machine(),
    }


def report(result: dict[str, Any]) -> str:
    rows = []
    for name, got in result["keydown_to_rendered_echo_ms"].items():
        if got is None:
            rows.append([name, "null", "null", "", ""])
            continue
        wire = got["echo_in_page_p50_ms"]
        rows.append(
            [
                name,
                f"{got['p50_ms']:.1f}",
                f"{got['p99_ms']:.1f}",
                "null" if wire is None else f"{wire:.1f}",
                str(got["keys"]),
            ]
        )
    head = ["series", "p50 ms", "p99 ms", "echo on the socket p50 ms", "keys"]
    return "Keydown to rendered echo in Chromium\n" + table(head, rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.browserkeys", description=__doc__)
    parser.add_argument("--keys", type=int, default=300, help="counted keys per series")
    parser.add_argument("--baseline", help="git ref whose terminal page runs as a third series")
    parser.add_argument("--mesh-ping-storm", action="store_true")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "browserkeys.json"
    )
    args = parser.parse_args()
    if not browser.BATCH <= args.keys <= 5000:
        parser.error(f"--keys must be between {browser.BATCH} and 5000")
    result = measure(args.keys, args.baseline, args.mesh_ping_storm)
    log("browserkeys: done")
    print(report(result))
    dump_json(args.json, result)
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
