"""The translation check (``scripts/i18n.py check``, run by ``scripts/check``) passes
on the tree and fails on each gap it is there to catch: a string with no
translation, a fuzzy one, a broken placeholder, a stale ``.mo``, a console key
missing in a language."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def i18n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/i18n.py pointed at a copy of the catalogs this test may break."""
    spec = importlib.util.spec_from_file_location("i18n_script", REPO / "scripts" / "i18n.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    locale = shutil.copytree(module.LOCALE, tmp_path / "locale")
    web = shutil.copytree(module.WEB_CATALOGS, tmp_path / "web-i18n")
    monkeypatch.setattr(module, "LOCALE", locale)
    monkeypatch.setattr(module, "TEMPLATE", locale / "allowhelp.pot")
    monkeypatch.setattr(module, "WEB_CATALOGS", web)
    return module


def test_the_tree_passes(i18n: ModuleType) -> None:
    assert list(i18n.problems()) == []


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_missing_translation_fails(i18n: ModuleType) -> None:
    po = i18n.po_path("nl")
    _replace(po, 'msgstr "Hulp toestaan"', 'msgstr ""')
    i18n.cmd_compile()  # even with a fresh .mo
    assert any("no translation for 'Allow help'" in p for p in i18n.problems())


def test_a_fuzzy_translation_fails(i18n: ModuleType) -> None:
    po = i18n.po_path("fr")
    _replace(po, 'msgid "Deny"', '#, fuzzy\nmsgid "Deny"')
    assert any("no translation for 'Deny'" in p for p in i18n.problems())


def test_a_broken_placeholder_fails(i18n: ModuleType) -> None:
    po = i18n.po_path("de")
    _replace(po, 'msgstr "Grund: %(reason)s"', 'msgstr "Grund: %(grund)s"')
    assert any("Reason: %(reason)s" in p for p in i18n.problems())


def test_a_stale_compiled_catalog_fails(i18n: ModuleType) -> None:
    po = i18n.po_path("fr")
    _replace(po, 'msgstr "Refuser"', 'msgstr "Non"')
    assert any("fr/LC_MESSAGES/allowhelp.mo is stale" in p for p in i18n.problems())


def test_a_string_the_agent_shows_that_no_catalog_has_fails(i18n: ModuleType) -> None:
    po = i18n.po_path("fr")
    text = po.read_text(encoding="utf-8")
    start = text.index('msgid "Denied."')
    po.write_text(text[:start] + text[text.index("\n\n", start) + 2 :], encoding="utf-8")
    assert any("'Denied.' is not in the catalog" in p for p in i18n.problems())


def test_a_console_key_missing_in_a_language_fails(i18n: ModuleType) -> None:
    _replace(i18n.WEB_CATALOGS / "nl.js", '"nav.machines": "Machines",\n', "")
    _replace(
        i18n.WEB_CATALOGS / "fr.js",
        '"help.open_count": "{count} ouvertes"',
        '"help.open_count": "ouvertes"',
    )
    problems = list(i18n.problems())
    assert "web/js/i18n/nl.js: no translation for 'nav.machines'" in problems
    assert "web/js/i18n/fr.js: 'help.open_count' changes the placeholders" in problems


def test_the_audit_account_replay_and_files_keys_are_in_every_language(i18n: ModuleType) -> None:
    """#24: the views that were English have their words in every catalog."""
    english = i18n.web_catalog("en")
    prefixes = ("audit.", "account.", "replay.", "files.", "extras.")
    ours = {key for key in english if key.startswith(prefixes)}
    assert len(ours) > 100
    for language in ("fr", "nl"):
        theirs = i18n.web_catalog(language)
        assert ours <= set(theirs), sorted(ours - set(theirs))
        same = sorted(k for k in ours if theirs[k] == english[k] and "{" not in english[k])
        assert len(same) <= 6, same  # "syslog", "Details", ...: not copied English


def test_a_plural_key_without_its_english_forms_fails(i18n: ModuleType) -> None:
    """tn("KEY", n) needs KEY.one and KEY.other in English (then in every language)."""
    en = i18n.WEB_CATALOGS / "en.js"
    _replace(en, '  "account.codes_left.one": "{count} recovery code left.",\n', "")
    problems = list(i18n.problems())
    assert "web/js/i18n/en.js: no text for 'account.codes_left.one', which the console uses" in (
        problems
    )


def test_an_untranslated_help_line_of_the_agent_fails(i18n: ModuleType) -> None:
    """allowhelp-agent --help is the user's too: a line with no French fails."""
    po = i18n.po_path("fr")
    _replace(
        po,
        'msgstr "autoriser une demande d\'aide en attente"',
        'msgstr ""',
    )
    i18n.cmd_compile()
    assert any("no translation for 'allow a waiting help request'" in p for p in i18n.problems())
