"""A peer's JSON object checked into one of our frozen dataclasses, field by field.

The one place for the value rules the control channel (``control.py``) and the
helper socket (``helper.py``) share; each says its own bounds in ``FieldRules``.
Every value is checked against its field's annotation (a string here, because of
``from __future__ import annotations``; the messages use only these few types) and
anything else is a one-line ``ProtocolError``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

from allowhelp.protocol.hostile_json import ProtocolError
from allowhelp.protocol.kinds import is_session_id


@dataclass(frozen=True)
class Record:
    """A flat message: its ``type`` and its fields, as one JSON object."""

    type: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object it is sent as (``type`` first)."""
        return {"type": self.type, **asdict(self)}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False).encode()


@dataclass(frozen=True)
class FieldRules:
    """One protocol's bounds.

    ``texts``: the longest string of each field (else ``text``); ``whole``: the
    lowest and highest whole number (``wholes`` by field); ``number``: the top of a
    float, from 0 (``numbers`` by field); ``choices``: the values a field may take,
    by its annotation (``Kind``) or name (``mode``); ``ids``: fields that hold an id
    (``is_session_id``), True where "" is allowed too."""

    texts: Mapping[str, int]
    text: int = 100
    whole: tuple[int, int] = (-1, 2**31 - 1)
    wholes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    number: float = 1e6
    numbers: Mapping[str, float] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ids: Mapping[str, bool] = field(default_factory=dict)

    def check(self, name: str, annotation: str, value: object) -> object:
        """One value against its field's annotation and these bounds."""
        if annotation == "bool":
            if not isinstance(value, bool):
                raise ProtocolError(f"{name} must be true or false")
            return value
        if annotation == "int":
            low, high = self.wholes.get(name, self.whole)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ProtocolError(f"{name} must be a whole number from {low} to {high}")
            return value
        if annotation == "float":
            return self._number(name, value)
        if annotation == "tuple[str, ...]":  # its items are the message's own check
            if not isinstance(value, list):
                raise ProtocolError(f"{name} must be a list")
            return value
        return self._text(name, annotation, value)

    def _number(self, name: str, value: object) -> float:
        top = self.numbers.get(name, self.number)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < top:
            return float(value)
        raise ProtocolError(f"{name} must be a number from 0 to {top:g}")

    def _text(self, name: str, annotation: str, value: object) -> str:
        if not isinstance(value, str):
            raise ProtocolError(f"{name} must be a string")
        limit = self.texts.get(name, self.text)
        if len(value) > limit:
            raise ProtocolError(f"{name} must be 0 to {limit} chars")
        allowed = self.choices.get(annotation, self.choices.get(name))
        if allowed is not None and value not in allowed:
            raise ProtocolError(f"{name} has an unknown value")
        if name in self.ids and not ((value == "" and self.ids[name]) or is_session_id(value)):
            raise ProtocolError(f"{name} is malformed")
        return value


def checked_fields(cls: type[Record], raw: Mapping[str, Any], rules: FieldRules) -> dict[str, Any]:
    """The dataclass ``cls``'s fields from ``raw``, each through ``rules``; a missing
    field without a default is a ``ProtocolError``, a field we do not know is ignored
    (a newer peer's)."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            if f.default is not MISSING:
                continue
            raise ProtocolError(f"{f.name} is missing")
        values[f.name] = rules.check(f.name, str(f.type), raw[f.name])
    return values
