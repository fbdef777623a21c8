"""Translations of what the PC user sees, with Babel: extract, update, compile, check.

    .venv/bin/python scripts/i18n.py extract   # the template from the agent's sources
    .venv/bin/python scripts/i18n.py update    # merge it into every language's .po
    .venv/bin/python scripts/i18n.py compile   # .po -> .mo (committed, shipped in the wheel)
    .venv/bin/python scripts/i18n.py check     # scripts/check: fails on any gap

``check`` fails when a string shown to the user has no translation (or a fuzzy
one) in a language of ``allowhelp.agent.i18n.LANGUAGES``, when a translation
breaks a placeholder, when a committed template or ``.mo`` is stale, and when
the console's catalogs (web/js/i18n/*.js) miss a key the console uses. How to
add a language: docs/i18n.md.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "allowhelp" / "agent"
LOCALE = SOURCES / "locale"
TEMPLATE = LOCALE / "allowhelp.pot"
DOMAIN = "allowhelp"
KEYWORDS = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)}
LANGUAGES = ("fr", "nl", "de")  # English is the source
WEB = ROOT / "web"
WEB_CATALOGS = WEB / "js" / "i18n"
WEB_LANGUAGES = ("en", "fr", "nl")
# t("key") in scripts, data-i18n="key" (and data-i18n-placeholder=...) in pages
WEB_KEY = re.compile(r"""(?:\bt\(\s*|data-i18n(?:-[a-z-]+)?=)["']([a-z0-9_.-]+)["']""")
# tn("key", count): the catalogs hold key.one and key.other
WEB_PLURAL_KEY = re.compile(r"""\btn\(\s*["']([a-z0-9_.-]+)["']""")
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def extracted() -> Catalog:
    catalog = Catalog(project="allowhelp", domain=DOMAIN, fuzzy=False)
    found = extract_from_dir(
        str(SOURCES), method_map=[("**.py", "python")], keywords=KEYWORDS, comment_tags=("i18n:",)
    )
    for filename, lineno, message, comments, context in found:
        path = (SOURCES / filename).relative_to(ROOT).as_posix()
        catalog.add(message, None, [(path, lineno)], auto_comments=comments, context=context)
    return catalog


def shown(path: Path) -> str:
    """``path`` as the messages name it: from the checkout's root when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def po_path(language: str) -> Path:
    return LOCALE / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def read(path: Path, language: str | None = None) -> Catalog:
    with path.open("rb") as file:
        return read_po(file, locale=language, domain=DOMAIN)


def po_bytes(catalog: Catalog) -> bytes:
    out = io.BytesIO()
    write_po(out, catalog, width=96, omit_header=False, sort_output=True)
    return out.getvalue()


def mo_bytes(catalog: Catalog) -> bytes:
    out = io.BytesIO()
    write_mo(out, catalog, use_fuzzy=False)
    return out.getvalue()


def cmd_extract() -> None:
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_bytes(po_bytes(extracted()))


def cmd_update() -> None:
    template = extracted()
    for language in LANGUAGES:
        path = po_path(language)
        catalog = read(path, language) if path.exists() else Catalog(locale=language)
        catalog.update(template, update_header_comment=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(po_bytes(catalog))


def cmd_compile() -> None:
    for language in LANGUAGES:
        path = po_path(language)
        path.with_suffix(".mo").write_bytes(mo_bytes(read(path, language)))


def problems() -> Iterator[str]:
    template = extracted()
    wanted = {m.id for m in template if m.id}
    if not TEMPLATE.exists() or {m.id for m in read(TEMPLATE) if m.id} != wanted:
        yield f"{shown(TEMPLATE)} is stale: run scripts/i18n.py extract, then update"
    for language in LANGUAGES:
        path = po_path(language)
        if not path.exists():
            yield f"{shown(path)} is missing"
            continue
        yield from _gaps(language, path, wanted)
    yield from web_problems()


def _gaps(language: str, path: Path, wanted: set[Any]) -> Iterator[str]:
    name = shown(path)
    catalog = read(path, language)
    for message in catalog:
        if not message.id or message.id not in wanted:
            continue
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        if message.fuzzy or not all(strings):
            yield f"{name}: no translation for {_first(message.id)!r}"
    have = {m.id for m in catalog if m.id}
    for missing in sorted(str(_first(m)) for m in wanted - have):
        yield f"{name}: {missing!r} is not in the catalog (run scripts/i18n.py update)"
    for message, errors in catalog.check():
        for error in errors:
            yield f"{name}: {_first(message.id)!r}: {error}"
    compiled = path.with_suffix(".mo")
    if not compiled.exists() or compiled.read_bytes() != mo_bytes(catalog):
        yield f"{shown(compiled)} is stale: run scripts/i18n.py compile"


def _first(message_id: object) -> object:
    return message_id[0] if isinstance(message_id, tuple) else message_id


def web_catalog(language: str) -> dict[str, str]:
    """A console catalog: ``export default { ...JSON... };`` (a module the page imports)."""
    text = (WEB_CATALOGS / f"{language}.js").read_text(encoding="utf-8")
    messages = json.loads(text[text.index("({") + 1 : text.rindex("})") + 1])
    if not isinstance(messages, dict):
        raise ValueError(f"{language}.js holds no object")
    return {str(k): str(v) for k, v in messages.items()}


def web_problems() -> Iterator[str]:
    """Every key the console uses is in English; every English key in every language,
    non-empty and with the same ``{placeholders}``."""
    used: set[str] = set()
    for path in [*WEB.glob("*.html"), *(WEB / "js").rglob("*.js")]:
        text = path.read_text(encoding="utf-8")
        used |= set(WEB_KEY.findall(text))
        plural = WEB_PLURAL_KEY.findall(text)
        used |= {f"{key}.{form}" for key in plural for form in ("one", "other")}
    catalogs = {}
    for language in WEB_LANGUAGES:
        if not (WEB_CATALOGS / f"{language}.js").exists():
            yield f"web/js/i18n/{language}.js is missing"
            return
        try:
            catalogs[language] = web_catalog(language)
        except ValueError as exc:  # JSONDecodeError too
            yield f"web/js/i18n/{language}.js: not export default ({{JSON}}): {exc}"
            return
    english = catalogs["en"]
    for key in sorted(used - set(english)):
        yield f"web/js/i18n/en.js: no text for {key!r}, which the console uses"
    for language, messages in catalogs.items():
        for key, text in sorted(english.items()):
            theirs = messages.get(key, "")
            if not theirs.strip():
                yield f"web/js/i18n/{language}.js: no translation for {key!r}"
            elif set(PLACEHOLDER.findall(theirs)) != set(PLACEHOLDER.findall(text)):
                yield f"web/js/i18n/{language}.js: {key!r} changes the placeholders"


def main(argv: list[str]) -> int:
    commands = {"extract": cmd_extract, "update": cmd_update, "compile": cmd_compile}
    if len(argv) != 1 or argv[0] not in (*commands, "check"):
        print("usage: scripts/i18n.py extract|update|compile|check", file=sys.stderr)
        return 2
    if argv[0] != "check":
        commands[argv[0]]()
        return 0
    found = list(problems())
    for problem in found:
        print(f"i18n: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
