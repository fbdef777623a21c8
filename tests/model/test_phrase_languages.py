"""The verification phrase's word lists: same strength in every language, words a
person can say, hear and spell on the phone without mistaking one for another."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

import pytest

from allowhelp.broker.model.phrase import (
    PHRASE_WORDS,
    WORD_LISTS,
    phrase_bits,
    phrase_language,
    verification_phrase,
)


def folded(word: str) -> str:
    """Lower case without accents: what a listener writes down."""
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _rules(word: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        word = re.sub(pattern, replacement, word)
    return word


def _single_consonants(word: str) -> str:
    return re.sub(r"([b-df-hj-np-tv-z])\1+", r"\1", word)


FRENCH = [
    (r"eaux?$", "o"),
    (r"eau", "o"),
    (r"au", "o"),
    (r"ph", "f"),
    (r"qu", "k"),
    (r"ch", "S"),
    (r"gn", "N"),
    (r"ou", "U"),
    (r"oi", "W"),
    (r"(ain|ein|aim)(?![aeiou])", "I"),
    (r"(ai|ei)", "E"),
    (r"e$", ""),
    (r"er$", "Er"),
    (r"(et|ez|es)$", "E"),
    (r"y", "i"),
    (r"c(?=[eiE])", "s"),
    (r"ç", "s"),
    (r"c", "k"),
    (r"g(?=[eiE])", "j"),
    (r"(?<=[aeiouEUW])s(?=[aeiouEUW])", "z"),
    (r"h", ""),
    (r"([b-df-hj-np-tv-z])\1+", r"\1"),
    (r"[stdxpzg]+$", ""),
    (r"e$", ""),
    (r"[stdxpz]+$", ""),
    (r"(an|en|am|em)(?![aeiouEUW])", "A"),
    (r"(ain|ein|in|un|im|Ein)(?![aeiouEUW])", "I"),
    (r"(on|om)(?![aeiouEUW])", "O"),
    (r"ll", "l"),
]
DUTCH = [
    (r"ij", "ei"),
    (r"au", "ou"),
    (r"dt$", "t"),
    (r"d$", "t"),
    (r"b$", "p"),
    (r"ch", "g"),
    (r"v", "f"),
    (r"z", "s"),
    (r"([b-df-hj-np-tv-z])\1+", r"\1"),
]
GERMAN = [
    (r"ß", "s"),
    (r"ph", "f"),
    (r"th", "t"),
    (r"v", "f"),
    (r"dt", "t"),
    (r"ck", "k"),
    (r"tz", "z"),
    (r"ie", "i"),
    (r"ai", "ei"),
    (r"(äu|eu)", "oi"),
    (r"ä", "e"),
    (r"([aeiouöü])h(?![aeiouäöü])", r"\1"),
    (r"([aeiou])\1", r"\1"),
    (r"([b-df-hj-np-tv-z])\1+", r"\1"),
    (r"d$", "t"),
    (r"g$", "k"),
    (r"b$", "p"),
]


BLURRED = str.maketrans("dbgvzDBGVZ", "tpkfstpkfs")


def sound_key(word: str, language: str) -> str:
    """A rough key of how ``word`` sounds: two words with the same key may be heard
    as each other on the phone (pin/pain, Wal/Wahl, hart/hard)."""
    rules = {"fr": FRENCH, "nl": DUTCH, "de": GERMAN}.get(language)
    if rules is None:
        key = _single_consonants(folded(word))
    elif language == "fr":
        key = _rules(folded(word), rules)
    else:
        key = _rules(word.lower(), rules)
    # a bad line blurs voiced and voiceless: tak/dak, beer/peer, Gabel/Kabel
    return key.translate(BLURRED)


def test_every_language_has_a_list_of_the_same_size_so_the_same_bits() -> None:
    assert set(WORD_LISTS) == {"en", "fr", "nl", "de"}
    sizes = {language: len(words) for language, words in WORD_LISTS.items()}
    assert set(sizes.values()) == {255}, sizes
    bits = {language: round(phrase_bits(language), 2) for language in WORD_LISTS}
    assert set(bits.values()) == {round(PHRASE_WORDS * math.log2(255), 2)} == {23.98}


@pytest.mark.parametrize("language", ["en", "fr", "nl", "de"])
def test_words_are_plain_short_and_unique(language: str) -> None:
    words = WORD_LISTS[language]
    assert all(re.fullmatch(r"[a-z]{3,10}", w) for w in words), [
        w for w in words if not re.fullmatch(r"[a-z]{3,10}", w)
    ]
    assert not [w for w, n in Counter(folded(w) for w in words).items() if n > 1]


@pytest.mark.parametrize("language", ["en", "fr", "nl", "de"])
def test_no_two_words_of_a_list_sound_alike(language: str) -> None:
    keys: dict[str, list[str]] = {}
    for word in WORD_LISTS[language]:
        keys.setdefault(sound_key(word, language), []).append(word)
    assert not [group for group in keys.values() if len(group) > 1]


@pytest.mark.parametrize(
    ("language", "pairs"),
    [
        ("fr", [("pin", "pain"), ("mer", "maire"), ("vert", "verre"), ("sel", "selle"),
                ("chant", "champ"), ("cou", "coup"), ("seau", "saut"), ("tante", "tente")]),
        ("nl", [("hart", "hard"), ("reis", "rijs"), ("pijl", "peil"), ("rat", "rad"),
                ("hout", "haut")]),
        ("de", [("wal", "wahl"), ("seite", "saite"), ("lid", "lied"), ("rad", "rat"),
                ("meer", "mehr"), ("tod", "tot"), ("leere", "lehre")]),
    ],
)  # fmt: skip
def test_the_sound_check_catches_known_homophones(
    language: str, pairs: list[tuple[str, str]]
) -> None:
    """The check above can fail: each of these pairs would be refused in a list."""
    for one, other in pairs:
        assert sound_key(one, language) == sound_key(other, language), (one, other)


@pytest.mark.parametrize("language", ["fr", "nl", "de", "en"])
def test_a_phrase_is_drawn_from_its_languages_list(language: str) -> None:
    for _ in range(50):
        words = verification_phrase(language=language).split()
        assert len(words) == PHRASE_WORDS and all(w in WORD_LISTS[language] for w in words)


@pytest.mark.parametrize("said", ["es", "", "FR", "fr_BE", None, 7, "x" * 100])
def test_an_unknown_or_malformed_language_gets_english(said: object) -> None:
    assert phrase_language(said) == "en"
    words = verification_phrase(language=phrase_language(said)).split()
    assert all(w in WORD_LISTS["en"] for w in words)
