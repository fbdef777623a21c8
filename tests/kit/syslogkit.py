"""Reading RFC 5424 syslog lines as a collector does."""

from __future__ import annotations

import re

HEADER_RE = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) \[(?P<sdid>[^ \]=\"]+)"
)


def parse_5424(line: str) -> dict[str, object]:
    """A strict reader of one structured-data element: an unescaped '"' or ']'
    inside a value makes it fail, which is the point."""
    m = HEADER_RE.match(line)
    assert m, line
    i, params = m.end(), dict[str, str]()
    while line[i] == " ":
        eq = line.index("=", i)
        name = line[i + 1 : eq]
        assert re.fullmatch(r"[^ =\]\"]{1,32}", name), name
        assert line[eq + 1] == '"'
        i, value = eq + 2, []
        while line[i] != '"':
            if line[i] == "\\" and line[i + 1] in '"\\]':
                value.append(line[i + 1])
                i += 2
            else:
                assert line[i] not in '"]'
                value.append(line[i])
                i += 1
        params[name] = "".join(value)
        i += 1
    assert line[i : i + 2] == "] ", line[i:]
    return {**m.groupdict(), "params": params, "msg": line[i + 2 :]}
