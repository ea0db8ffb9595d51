"""Split narration text into speakable sentences for sentence-by-sentence TTS.

Approach, in one linear pass per stage:

1. Drop control characters that are not whitespace, then cut the text into
   paragraphs at blank lines (a paragraph break always ends a sentence).
2. Collapse every whitespace run inside a paragraph to one space.
3. Find runs of terminators (``. ! ? …`` and CJK ``。！？``) together with any
   closing quotes/brackets after them. A run ends a sentence only when a space
   and something sentence-like (capital, caseless letter, digit, opening
   quote) follow, and a lone ``.`` is not an abbreviation or initial. Dots
   inside numbers, versions and URLs are never followed by a space, so they
   never become candidates. CJK terminators need no following space.
4. Cut any sentence longer than ``max_chars`` at the strongest available
   break nearest the limit: clause punctuation, then commas, then spaces,
   and as a last resort a hard cut.
5. Drop pieces with nothing to pronounce (no alphanumeric character).

Every regex is a run of character classes without nested quantifiers, so
no input can make the matcher backtrack catastrophically.
"""

import re

# C0 controls, DEL and C1 controls, except the ones Python treats as
# whitespace (\t \n \v \f \r, \x1c-\x1f, \x85): those become spaces instead.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
# Swallowing the trailing whitespace merges a stack of blank lines into one break.
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
_TERMINATORS = ".!?…؟"
_CJK_TERMINATORS = "。！？"
_CLOSERS = "\"'”’)]»」』）】"
_OPENERS = "\"'“‘([{«¿¡"
# A candidate is a terminator run plus its closers. CJK runs always end a
# sentence. Other runs must be followed by a space and then a letter, digit or
# opener; ASCII lowercase is excluded right here, so that common non-boundaries
# ("Well... maybe") never reach Python code. Each lookbehind lets a run be tried
# only from its first character, which keeps a megabyte of dots linear.
_CANDIDATE = re.compile(
    rf"(?<![{_CJK_TERMINATORS}])(?P<cjk>[{_CJK_TERMINATORS}]+)[{re.escape(_CLOSERS)}]*"
    rf"|(?<![{_TERMINATORS}])(?P<stop>[{_TERMINATORS}]+)[{re.escape(_CLOSERS)}]*"
    rf"(?= (?:[^\W_a-z]|[{re.escape(_OPENERS)}]))"
)
# Exactly the characters for which str.isalnum() is true (checked over every
# code point), but scanned in C rather than one Python call per character.
_ALNUM = re.compile(r"[^\W_]")
_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")

# "etc." is listed although it often really ends a sentence: telling the two
# apart needs semantics, and a missed split only makes one utterance longer,
# while a wrong split in "Dr. Smith" audibly breaks the prosody. The same
# trade-off applies to a.m./p.m. and to single capitals ("Plan B. Then").
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "capt",
        "lt",
        "col",
        "gen",
        "sgt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "vol",
        "fig",
        "approx",
    }
)
# "no" is also an ordinary word ("The answer was no. Then..."), so it only
# counts as an abbreviation when a number follows ("No. 5").
_NUMBER_ABBREVIATIONS = frozenset({"no"})

# Fullwidth CJK punctuation is not followed by spaces, so it needs no lookahead.
_CLAUSE_BREAK = re.compile(r"[;:](?= )| [—–-](?= )|[；：]")
_COMMA_BREAK = re.compile(r",(?= )|[，、]")


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Split narration text into speakable sentences, in order."""
    return [piece for piece in _pieces(text, max_chars) if _is_speakable(piece)]


def _pieces(text: str, max_chars: int) -> list[str]:
    """The sentences and cuts of a text, those with nothing to pronounce included."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    cleaned = _CONTROL_CHARS.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    pieces: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(cleaned):
        collapsed = " ".join(paragraph.split())
        for sentence in _split_paragraph(collapsed):
            if len(sentence) <= max_chars:
                pieces.append(sentence)
            else:
                pieces.extend(_split_long(sentence, max_chars))
    return pieces


def _split_paragraph(paragraph: str) -> list[str]:
    """Cut a whitespace-collapsed paragraph at its sentence boundaries."""
    sentences = []
    start = 0
    for match in _CANDIDATE.finditer(paragraph):
        if match.group("cjk") or _ends_sentence(paragraph, match):
            sentences.append(paragraph[start : match.end()].strip())
            start = match.end()
    sentences.append(paragraph[start:].strip())
    return [sentence for sentence in sentences if sentence]


def _ends_sentence(text: str, match: re.Match) -> bool:
    """Whether a non-CJK candidate really ends a sentence."""
    following = text[match.end() + 1]
    # The regex already rejected ASCII lowercase; this catches "é", "ж"...
    # Caseless scripts (Hebrew, Arabic, CJK) pass, as they never look lowercase.
    if following.islower():
        return False
    return match.group("stop") != "." or not _is_abbreviation(text, match.start(), following)


def _is_abbreviation(text: str, dot: int, following: str) -> bool:
    """Whether the word ending at index ``dot`` is an abbreviation or initial."""
    word = text[text.rfind(" ", 0, dot) + 1 : dot].lstrip(_OPENERS)
    lowered = word.lower()
    if lowered in _NUMBER_ABBREVIATIONS:
        return following.isdigit()
    return lowered in _ABBREVIATIONS or _is_initials(word)


def _is_initials(word: str) -> bool:
    """Whether a word is a capital initial ("J") or dotted letters ("J.R.R", "U.S")."""
    if len(word) == 1:
        return word.isupper()
    return _INITIALS.fullmatch(word) is not None


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """Cut a collapsed sentence into pieces of at most ``max_chars`` characters."""
    pieces = []
    start = 0
    # Offsets instead of slicing the remainder keep a huge sentence linear.
    while len(sentence) - start > max_chars:
        window = sentence[start : start + max_chars + 1]
        cut = _best_cut(window, max_chars)
        pieces.append(window[:cut].rstrip())
        start += cut
        if sentence[start] == " ":
            start += 1
    pieces.append(sentence[start:])
    return pieces


def _best_cut(window: str, max_chars: int) -> int:
    """Index to cut ``window`` at: strongest break kind first, then latest fitting one."""
    for pattern in (_CLAUSE_BREAK, _COMMA_BREAK):
        ends = [match.end() for match in pattern.finditer(window) if match.end() <= max_chars]
        if ends:
            return ends[-1]
    space = window.rfind(" ", 1, max_chars + 1)
    return space if space > 0 else max_chars


def _is_speakable(piece: str) -> bool:
    """Whether a piece has anything a TTS engine can pronounce."""
    return _ALNUM.search(piece) is not None


def split_complete(text: str, max_chars: int = 300) -> tuple[list[str], str]:
    """The sentences of a text still being written that more text cannot change, and the rest.

    A sentence is complete once what follows it proves the boundary (a space and a capital, a
    paragraph break, a CJK terminator); the rest is returned as written, to be continued. The rest
    starts at the latest word start where the text splits exactly as it does whole, unspeakable
    pieces included: punctuation alone ("::: ") may yet begin a sentence ("::: :0"), and a rest
    with nothing in it yet (a control character) proves no boundary.
    """
    pieces = _pieces(text, max_chars)
    for start in _word_starts(text):
        rest = _pieces(text[start:], max_chars)
        if not rest or pieces[len(pieces) - len(rest) :] != rest or len(rest) > len(pieces):
            continue
        done = _pieces(text[:start], max_chars)
        if done + rest == pieces:
            return [piece for piece in done if _is_speakable(piece)], text[start:]
    return [], text


def _word_starts(text: str) -> list[int]:
    """Where a sentence could begin, latest first: after whitespace or a CJK terminator, and 0."""
    starts = [i for i in range(len(text) - 1, 0, -1) if _begins_word(text, i)]
    return [*starts, 0]


def _begins_word(text: str, i: int) -> bool:
    return not text[i].isspace() and (text[i - 1].isspace() or text[i - 1] in _CJK_TERMINATORS)
