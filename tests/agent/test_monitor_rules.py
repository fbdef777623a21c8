"""The monitors line, what each engine can show, and the desktops' answers parsed (pure logic)."""

from __future__ import annotations

import json

import pytest

from allowhelp.agent.monitors import parse_sway_outputs, parse_xrandr
from allowhelp.protocol.control import ConsentRequest, Hello, decode
from allowhelp.protocol.helper import Open
from allowhelp.protocol.helper import decode as decode_packet
from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.monitors import (
    ALL,
    MAX_MONITORS,
    Monitor,
    encode,
    is_monitor_name,
    primary,
    refusal,
)
from allowhelp.protocol.monitors import decode as decode_monitors

LEFT = Monitor("HDMI-1", 1920, 1080, 0, 0, primary=True)
RIGHT = Monitor("DP-1", 2560, 1440, 1920, -100)
XRANDR = """Monitors: 3
 0: +*HDMI-1 1920/527x1080/296+0+0  HDMI-1
 1: +DP-1 2560/597x1440/336+1920-100  DP-1
 2: right 1280/338x800/211+1280+0{space}
""".format(space=" ")  # xrandr ends a line without output with a space


def test_the_line_goes_both_ways() -> None:
    line = encode([LEFT, RIGHT])
    assert line == "HDMI-1 1920x1080+0+0 primary;DP-1 2560x1440+1920+-100"
    assert decode_monitors(line) == (LEFT, RIGHT)
    assert decode_monitors("") == ()
    assert primary([RIGHT, LEFT]) == LEFT and primary([RIGHT]) == RIGHT and primary([]) is None


def test_encode_leaves_out_what_a_request_could_not_name() -> None:
    odd = [Monitor("bad name", 10, 10), Monitor(ALL, 10, 10), Monitor("z", 0, 10), LEFT]
    assert decode_monitors(encode(odd)) == (LEFT,)
    many = [Monitor(f"M{i}", 10, 10) for i in range(MAX_MONITORS + 5)]
    assert len(decode_monitors(encode(many))) == MAX_MONITORS


@pytest.mark.parametrize(
    "line",
    [
        "HDMI-1 1920x1080",
        "HDMI-1 1920x1080+0+0 secondary",
        "HDMI-1 0x1080+0+0",
        "HDMI-1 1920x1080+0+0;HDMI-1 1920x1080+0+0",
        "all 10x10+0+0",
        "-x 10x10+0+0",
        "a\nb 10x10+0+0",
        ";".join(f"M{i} 10x10+0+0" for i in range(MAX_MONITORS + 1)),
        "M 10x10+0+0" + " " * 2000,
    ],
)
def test_a_malformed_line_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        decode_monitors(line)


def test_names() -> None:
    assert is_monitor_name("HDMI-A-1") and is_monitor_name("eDP-1") and is_monitor_name("DP-1.8")
    for bad in ("", ALL, "a b", "-a", "é", "x" * 65, 3, None):
        assert not is_monitor_name(bad)


@pytest.mark.parametrize(
    ("engine", "monitors", "choice", "said"),
    [
        ("x11", [LEFT, RIGHT], "", ""),
        ("x11", [LEFT, RIGHT], "DP-1", ""),
        ("x11", [LEFT, RIGHT], ALL, ""),
        ("x11", [LEFT, RIGHT], "DP-2", "no monitor 'DP-2' (it has HDMI-1, DP-1)"),
        ("x11", [], "DP-1", "did not report its monitors"),
        ("x11", [], ALL, "did not report its monitors"),
        ("wlroots", [LEFT, RIGHT], "DP-1", ""),
        ("wlroots", [LEFT, RIGHT], ALL, ""),
        ("none", [LEFT, RIGHT], ALL, "one monitor at a time"),
        ("wlroots", [], "", ""),
        ("portal", [], "", ""),
        ("portal", [], "DP-1", "screen-sharing dialog"),
        ("portal", [LEFT], "HDMI-1", "screen-sharing dialog"),
        ("portal", [LEFT, RIGHT], ALL, ""),
        ("portal", [], ALL, "did not report its monitors"),
        ("", [], "DP-1", "did not report its monitors"),
    ],
)
def test_what_each_engine_can_show(
    engine: str, monitors: list[Monitor], choice: str, said: str
) -> None:
    problem = refusal(engine, monitors, choice)
    assert (said in problem and bool(problem)) if said else problem == ""


def test_xrandr_listmonitors() -> None:
    assert parse_xrandr(XRANDR) == (
        LEFT,
        Monitor("DP-1", 2560, 1440, 1920, -100),
        Monitor("right", 1280, 800, 1280, 0),
    )
    assert parse_xrandr("") == () and parse_xrandr("Monitors: 1\n garbage\n") == ()


def test_sway_outputs() -> None:
    outputs = [
        {
            "name": "HEADLESS-1",
            "active": True,
            "rect": {"x": 0, "y": 0, "width": 1024, "height": 768},
        },
        {"name": "HEADLESS-2", "active": False, "rect": {"x": 0, "y": 0, "width": 0, "height": 0}},
        {"name": "bad name", "rect": {"x": 0, "y": 0, "width": 5, "height": 5}},
        {"name": "X", "rect": {"x": "0", "y": 0, "width": 5, "height": 5}},
        "nonsense",
    ]
    assert parse_sway_outputs(json.dumps(outputs)) == (Monitor("HEADLESS-1", 1024, 768),)
    assert parse_sway_outputs("not json") == () and parse_sway_outputs("{}") == ()


def test_the_wire_fields_have_defaults_and_bounds() -> None:
    """An older agent's hello (no monitors) and an older broker's request (no monitor)
    still decode; an over-long one is refused."""
    hello = decode(b'{"type":"hello","hostname":"h","os":"o","user":"u","version":"0.1.0"}')
    assert isinstance(hello, Hello) and hello.monitors == ""

    def asked(monitor: str) -> bytes:
        request = ConsentRequest("s" * 10, "o", "t", "screen", "r", "p", 5.0, monitor=monitor)
        return request.encode()

    again = decode(asked("DP-1"))
    assert isinstance(again, ConsentRequest) and again.monitor == "DP-1"
    with pytest.raises(ProtocolError):
        decode(asked("x" * 65))
    opened = decode_packet(Open("s" * 10, "screen", "", 0, 0, False, "DP-1").encode())
    assert isinstance(opened, Open) and opened.monitor == "DP-1"
