"""Captions of synthetic scenes: the fixed grammar, its closed vocabulary, and caption generation.

A caption is plain lowercase words separated by single spaces, no punctuation, so a whitespace
word-level tokenizer covers every caption exactly. The grammar:

    caption  = subject VERB [LINK others] "on" floor "under" sky
    subject  = article [PATTERN] COLOR... SHAPE          e.g. "a red striped box"
    others   = other ("and" other)*                     e.g. "a spinning green sphere"
    other    = article PARTICIPLE COLOR [PATTERN] SHAPE
    floor    = article COLOR [PATTERN] "floor"           e.g. "a gray checkered floor"
    sky      = article COLOR "sky"

Example: ``a red striped box slides past a spinning green sphere on a gray checkered floor
under a blue sky``. The subject (object 0) always moves; a static object is "still".
"""

from __future__ import annotations

# Object and floor colours: name -> sRGB in [0, 1]. The caption names the main colour only.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.14, 0.12),
    "orange": (0.96, 0.50, 0.10),
    "yellow": (0.96, 0.84, 0.16),
    "green": (0.22, 0.68, 0.24),
    "blue": (0.16, 0.36, 0.86),
    "purple": (0.56, 0.26, 0.76),
    "pink": (0.96, 0.52, 0.70),
    "cyan": (0.18, 0.76, 0.84),
    "white": (0.93, 0.93, 0.90),
    "black": (0.10, 0.10, 0.11),
    "brown": (0.52, 0.32, 0.16),
    "gray": (0.52, 0.52, 0.54),
}
FLOOR_COLORS: dict[str, tuple[float, float, float]] = {
    "gray": (0.62, 0.62, 0.63),
    "white": (0.80, 0.80, 0.78),
    "brown": (0.58, 0.42, 0.28),
    "green": (0.36, 0.56, 0.30),
    "beige": (0.84, 0.76, 0.60),
    "blue": (0.42, 0.52, 0.70),
}
# Sky name -> (zenith sRGB, horizon sRGB, sun colour sRGB).
SKIES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "blue": ((0.24, 0.46, 0.86), (0.76, 0.86, 0.96), (1.00, 0.97, 0.90)),
    "orange": ((0.34, 0.34, 0.62), (0.98, 0.66, 0.36), (1.00, 0.88, 0.70)),
    "gray": ((0.55, 0.58, 0.63), (0.84, 0.84, 0.84), (0.90, 0.90, 0.92)),
    "pink": ((0.44, 0.40, 0.72), (0.98, 0.76, 0.80), (1.00, 0.86, 0.84)),
}
SHAPES = ("sphere", "box", "cylinder", "capsule", "torus")
# Object texture -> adjective ("solid" has none).
PATTERN_WORDS = {"solid": None, "striped": "striped", "checker": "checkered", "noise": "speckled"}
FLOOR_PATTERN_WORDS = {"solid": None, "striped": "striped", "checker": "checkered", "noise": "speckled"}
# Motion -> (third-person verb, participle, link word before the other objects).
MOTIONS: dict[str, tuple[str, str, str]] = {
    "static": ("rests", "still", "beside"),
    "bounce": ("bounces", "bouncing", "beside"),
    "slide": ("slides", "sliding", "past"),
    "roll": ("rolls", "rolling", "past"),
    "orbit": ("orbits", "orbiting", "around"),
    "spin": ("spins", "spinning", "beside"),
    "grow": ("grows", "growing", "beside"),
    "shrink": ("shrinks", "shrinking", "beside"),
    "wobble": ("wobbles", "wobbling", "beside"),
}
FUNCTION_WORDS = ("a", "an", "and", "on", "under", "floor", "sky")


def _build_vocabulary() -> list[str]:
    words: list[str] = list(FUNCTION_WORDS)
    words += list(COLORS) + list(FLOOR_COLORS) + list(SKIES) + list(SHAPES)
    words += [w for w in PATTERN_WORDS.values() if w] + [w for w in FLOOR_PATTERN_WORDS.values() if w]
    for verb, participle, link in MOTIONS.values():
        words += [verb, participle, link]
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)


# Every word any caption can use, and nothing else; order is fixed (tokenizer ids depend on it).
VOCABULARY: list[str] = _build_vocabulary()


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(color: str, pattern: str, shape: str, participle: str | None = None) -> str:
    """'a spinning green striped sphere' (participle first, pattern adjective after colour)."""
    words = [participle] if participle else []
    words.append(color)
    if PATTERN_WORDS[pattern]:
        words.append(PATTERN_WORDS[pattern])
    words.append(shape)
    return " ".join([article(words[0])] + words)


def make_caption(objects: list[tuple[str, str, str, str]], floor: tuple[str, str], sky: str) -> str:
    """Caption from ``objects`` = [(colour, pattern, shape, motion), ...] (object 0 is the
    subject), ``floor`` = (colour, pattern) and the sky colour."""
    color, pattern, shape, motion = objects[0]
    verb, _, link = MOTIONS[motion]
    words = [object_phrase(color, pattern, shape), verb]
    if len(objects) > 1:
        others = [object_phrase(c, p, s, MOTIONS[m][1]) for c, p, s, m in objects[1:]]
        words += [link, " and ".join(others)]
    fcolor, fpattern = floor
    fwords = [fcolor] + ([FLOOR_PATTERN_WORDS[fpattern]] if FLOOR_PATTERN_WORDS[fpattern] else [])
    words += ["on", article(fwords[0])] + fwords + ["floor", "under", article(sky), sky, "sky"]
    return " ".join(words)


def caption_words(caption: str) -> list[str]:
    return caption.split(" ")
