"""Another node's answer to a session list (``node_routes.invitee_views_of``): what a
node sends is checked before it joins this node's list. Plain logic."""

from __future__ import annotations

import pytest

from allowhelp.broker.console.api.node_routes import invitee_views_of


def test_a_list_of_sessions_is_taken() -> None:
    assert invitee_views_of(b'[{"id": "s-1", "owner_here": true}]') == [
        {"id": "s-1", "owner_here": True}
    ]
    assert invitee_views_of(b"[]") == []


@pytest.mark.parametrize(
    "text",
    [
        b"[" * 200_000 + b"]" * 200_000,  # past Python's stack: RecursionError
        b'[{"id": "s-1", "size": NaN}]',  # JSONResponse would refuse to send it on
        b'[{"id": "s-1", "size": Infinity}]',
        b'[{"id": "s-1", "size": 1e999}]',  # a float past its range: inf all the same
        b'[{"id": "s-1", "size": -1e999}]',
        b'{"id": "s-1"}',
        b'[{"id": 7}]',
        b"[1]",
        b"not json",
    ],
)
def test_anything_else_is_refused_as_a_value_error(text: bytes) -> None:
    with pytest.raises(ValueError):
        invitee_views_of(text)
