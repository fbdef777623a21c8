"""Verification phrases: three common words the technician reads on the phone.

The user compares them with the prompt on their screen, so a prompt raised by
someone else (another technician, a stolen key) is spotted. Short, unambiguous,
easy to say words; 255 of them give 16.6 million phrases.
"""

from __future__ import annotations

import secrets

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
    orange orbit orchid otter owl oyster paddle palace panda paper parrot peach pebble
    pelican pepper piano pickle pigeon pillow pilot pine planet plum pocket pony poppy
    potato pumpkin puzzle quartz quilt rabbit raccoon radar radish rainbow raven ribbon
    river robin rocket rose saddle salmon sandal satin school scooter seal shadow shell
    silver sketch sleigh snail spark spider spiral sponge spruce squid stable statue stream
    sugar summit sunset swan table tango teapot tiger timber toast tomato topaz torch
    tractor trumpet tulip tunnel turtle umbrella valley velvet violin volcano wagon walnut
    walrus water whale whistle willow window winter wizard wolf yogurt zebra zipper
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def verification_phrase(words: int = 3) -> str:
    return " ".join(secrets.choice(WORDS) for _ in range(words))
