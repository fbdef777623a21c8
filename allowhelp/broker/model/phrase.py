"""Verification phrases: three common words the technician reads on the phone.

The user compares them with the prompt on their screen, so a prompt raised by
someone else (another technician, a stolen key) is spotted. Short, unambiguous,
easy to say words; 255 of them give 16.6 million phrases (23.98 bits).

The words are in the PC user's language (the agent says it in its Hello):
English, French, Dutch or German, each list of the same size, so a phrase is
exactly as strong in every language; any other language gets English.
"""

from __future__ import annotations

import math
import secrets

from allowhelp.broker.model.wordlists import DUTCH, FRENCH, GERMAN

PHRASE_WORDS = 3

WORDS = tuple(
    """
    acorn actor agent album amber anchor apple april arrow atlas autumn badge baker bamboo
    banjo barrel basket beach beacon berry bicycle bison blanket blossom bonnet border
    bottle bridge bronze brook bucket butter button cabin cactus camel camera canal candle
    canoe canyon carbon carpet castle cedar chalk cherry chess circle cliff clover cobalt
    coconut comet copper coral cotton cousin coyote crane crayon cricket crystal cup daisy
    delta desert diamond dinner dolphin donkey dragon drum eagle echo ember engine falcon
    feather fern fiddle field finch flame flute forest fossil fountain fox galaxy garden
    garlic gecko ginger glacier globe goose granite grape gravel guitar hammer harbor
    harvest hazel helmet heron hollow honey horizon igloo island ivory jacket jaguar
    jasmine jelly jigsaw jungle kayak kettle kiwi ladder lagoon lantern lava lemon lily
    lizard lobster locket magnet mango maple marble meadow melon meteor mint mirror mitten
    monkey moose mosaic muffin museum needle nest noodle nutmeg oasis ocean olive onion
    orange orbit orchid otter owl oyster paddle palace panda paper parrot pecan pebble
    pelican pepper piano pickle pigeon pillow pilot pine planet plum pocket pony poppy
    potato pumpkin puzzle quartz quilt rabbit raccoon radar radish rainbow raven ribbon
    river robin rocket rose saddle salmon sandal satin school scooter seal shadow shell
    silver sketch sleigh snail spark spider spiral sponge spruce squid stable statue stream
    sugar summit sunset swan table tango teapot tiger timber toast tomato topaz torch
    tractor trumpet tulip tunnel turtle umbrella valley velvet violin volcano wagon walnut
    walrus water whale whistle willow window winter wizard wolf yogurt zebra zipper
    """.split()  # noqa: SIM905 - a word list reads better as text
)


WORD_LISTS: dict[str, tuple[str, ...]] = {"en": WORDS, "fr": FRENCH, "nl": DUTCH, "de": GERMAN}
PHRASE_LANGUAGES = tuple(WORD_LISTS)


def phrase_language(language: object) -> str:
    """The list for what an agent said (anything unknown or malformed: English)."""
    return language if isinstance(language, str) and language in WORD_LISTS else "en"


def phrase_bits(language: str = "en", words: int = PHRASE_WORDS) -> float:
    """The phrase's strength: log2 of the number of phrases."""
    return words * math.log2(len(WORD_LISTS[phrase_language(language)]))


def verification_phrase(words: int = PHRASE_WORDS, language: str = "en") -> str:
    """``words`` words drawn uniformly (``secrets``) from the list of ``language``."""
    chosen = WORD_LISTS[phrase_language(language)]
    return " ".join(secrets.choice(chosen) for _ in range(words))
