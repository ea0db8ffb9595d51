import pytest

from tts.sentences import split_sentences


def collapse(text):
    return " ".join(text.split())


def test_empty_and_whitespace_only_input():
    """Empty or whitespace-only text yields no sentences."""
    assert split_sentences("") == []
    assert split_sentences("   \n\t \r\n  ") == []


def test_basic_terminators():
    """Full stops, exclamation and question marks end sentences."""
    assert split_sentences("One. Two! Three? Four") == ["One.", "Two!", "Three?", "Four"]


def test_terminator_runs_stay_together():
    """Runs like ?! or !!! stay attached to their sentence."""
    assert split_sentences("Really?! Yes!!! Fine.") == ["Really?!", "Yes!!!", "Fine."]


def test_whitespace_is_collapsed_and_stripped():
    """Internal whitespace runs become single spaces and pieces are stripped."""
    assert split_sentences("  Hello \t  big\nworld.   Next\u00a0 one.  ") == [
        "Hello big world.",
        "Next one.",
    ]


def test_lowercase_after_terminator_does_not_split():
    """A terminator followed by a lowercase word is not a boundary."""
    assert split_sentences('"Run!" he said.') == ['"Run!" he said.']


def test_digit_after_terminator_splits():
    """A digit can start a new sentence."""
    assert split_sentences("Count down. 3 2 1 go.") == ["Count down.", "3 2 1 go."]


@pytest.mark.parametrize(
    "text",
    [
        "Mr. Smith arrived.",
        "Mrs. Smith and Ms. Jones met Dr. Who.",
        "Prof. Xavier met Sr. Lopez and Jr. Officer Kay.",
        "He lives on Main St. Near the park.",
        "We climbed Mt. Everest.",
        "Capt. Kirk, Lt. Uhura, Col. Mustard, Gen. Grant and Sgt. Pepper.",
        "Cats vs. Dogs is a debate.",
        "Apples, pears, etc. And more.",
        "Fruit, e.g. Apples, i.e. Edible things.",
        "It starts at 9 a.m. Sharp and ends at 5 P.M. Friday.",
        "See No. 5 in Vol. 2, Fig. 3 for details.",
        "It weighs approx. 5 kg.",
        "DR. HOUSE and MR. BEAN.",
    ],
)
def test_abbreviations_do_not_split(text):
    """Common abbreviations (any case) never end a sentence."""
    assert split_sentences(text) == [text]


def test_etc_at_true_sentence_end_stays_unsplit():
    """Documented choice: 'etc.' before a capitalised word is kept as one sentence."""
    text = "We packed food, water, etc. Then we left."
    assert split_sentences(text) == [text]


def test_no_splits_as_word_but_not_before_number():
    """'no.' is a word unless a number follows ('No. 5')."""
    assert split_sentences("The answer was no. Then No. 5 came.") == [
        "The answer was no.",
        "Then No. 5 came.",
    ]


def test_abbreviation_inside_quotes_or_brackets():
    """An abbreviation after an opening quote or bracket is still recognised."""
    assert split_sentences('("Dr. Watson" came.) Next.') == ['("Dr. Watson" came.)', "Next."]


def test_initials_do_not_split():
    """Single capital initials and dotted initials do not end sentences."""
    assert split_sentences("J. R. R. Tolkien wrote it. J.R.R. Martin did not.") == [
        "J. R. R. Tolkien wrote it.",
        "J.R.R. Martin did not.",
    ]


def test_ordinary_word_before_capital_splits():
    """A plain word followed by a capitalised word is a boundary."""
    assert split_sentences("I saw it. It was big.") == ["I saw it.", "It was big."]


@pytest.mark.parametrize(
    "text",
    [
        "Pi is 3.14 today.",
        "Upgrade to v1.2.3 now.",
        "It costs $4.50 each.",
        "Mail bob@example.com or see www.example.org/a.b?c=d now.",
    ],
)
def test_dots_inside_tokens_do_not_split(text):
    """Dots in numbers, versions, prices, emails and URLs are not boundaries."""
    assert split_sentences(text) == [text]


def test_number_at_sentence_end_still_splits():
    """A sentence ending in a number still ends there."""
    assert split_sentences("It cost $4. Then it rose.") == ["It cost $4.", "Then it rose."]


def test_straight_quotes_stay_with_sentence():
    """Closing straight quotes after the terminator belong to the sentence."""
    assert split_sentences('He said "Run!" Then he left.') == ['He said "Run!"', "Then he left."]
    assert split_sentences("She said 'Go.' Then she left.") == ["She said 'Go.'", "Then she left."]


def test_curly_quotes_stay_with_sentence():
    """Closing curly quotes after the terminator belong to the sentence."""
    assert split_sentences("He said “Run!” Then he left. She said ‘Go.’ Fine.") == [
        "He said “Run!”",
        "Then he left.",
        "She said ‘Go.’",
        "Fine.",
    ]


def test_brackets_stay_with_sentence():
    """Closing ) and ] after the terminator belong to the sentence."""
    assert split_sentences("(It rained.) Then [it stopped!] Good.") == [
        "(It rained.)",
        "Then [it stopped!]",
        "Good.",
    ]


def test_opening_quote_starts_new_sentence():
    """An opening quote after a terminator starts a new sentence."""
    assert split_sentences('He left. "Why?" she asked. “No idea.”') == [
        "He left.",
        '"Why?" she asked.',
        "“No idea.”",
    ]


def test_ellipsis_before_capital_splits():
    """An ellipsis (three dots or the … character) before a capital splits."""
    assert split_sentences("Wait... Then it ended… Yes.") == ["Wait...", "Then it ended…", "Yes."]


def test_ellipsis_before_lowercase_does_not_split():
    """An ellipsis before a lowercase word stays inside the sentence."""
    assert split_sentences("Well... maybe. Hmm… perhaps not.") == [
        "Well... maybe.",
        "Hmm… perhaps not.",
    ]


def test_terminator_without_following_space_does_not_split():
    """A terminator glued to the next word is not a boundary."""
    assert split_sentences("Stop.Go now.") == ["Stop.Go now."]


def test_paragraph_break_ends_sentence():
    """A blank line ends a sentence even without punctuation."""
    assert split_sentences("Chapter One\n\nIt was dark") == ["Chapter One", "It was dark"]


def test_blank_line_with_spaces_and_crlf_is_a_break():
    """Blank lines holding spaces, or written with CRLF, still break paragraphs."""
    assert split_sentences("Title\r\n \t\r\nBody text\n\n\n\nEnd") == ["Title", "Body text", "End"]


def test_single_newline_does_not_split():
    """A single newline is just whitespace."""
    assert split_sentences("a line that wraps\nonto the next line.") == ["a line that wraps onto the next line."]


def test_long_sentence_splits_at_clause_punctuation_first():
    """An over-long sentence is cut at ; : or dashes before commas or spaces."""
    text = "alpha, beta gamma; delta epsilon, zeta: eta theta iota"
    pieces = split_sentences(text, max_chars=25)
    assert pieces == ["alpha, beta gamma;", "delta epsilon, zeta:", "eta theta iota"]


def test_long_sentence_splits_at_dashes():
    """Spaced em dashes and hyphens are clause boundaries; word-internal hyphens are not."""
    text = "one well-known two — three four - five six"
    assert split_sentences(text, max_chars=20) == [
        "one well-known two —",
        "three four -",
        "five six",
    ]


def test_long_sentence_falls_back_to_commas_then_spaces():
    """Without clause punctuation the cut goes at the last fitting comma, else space."""
    pieces = split_sentences("aa bb, cc dd, ee ff gg hh", max_chars=14)
    assert pieces == ["aa bb, cc dd,", "ee ff gg hh"]
    assert split_sentences("aa bb cc dd ee ff", max_chars=8) == ["aa bb cc", "dd ee ff"]


def test_long_split_picks_latest_fitting_break():
    """Among breaks of one kind, the cut closest to max_chars wins."""
    text = "a; bb; ccc; dddd; eeeee"
    assert split_sentences(text, max_chars=12) == ["a; bb; ccc;", "dddd; eeeee"]


def test_long_text_pieces_fit_and_preserve_content():
    """Every piece fits max_chars and joining the pieces restores the text."""
    clause = "the quick brown fox, jumping over lazy dogs; then resting — briefly"
    text = " ".join([clause] * 40) + "."
    for max_chars in (20, 37, 80, 300):
        pieces = split_sentences(text, max_chars=max_chars)
        assert all(0 < len(piece) <= max_chars for piece in pieces)
        assert " ".join(pieces) == text


def test_giant_word_is_hard_cut():
    """A single word longer than max_chars is cut at exactly max_chars."""
    word = "x" * 250
    pieces = split_sentences(f"Look {word} here.", max_chars=100)
    assert pieces == ["Look", "x" * 100, "x" * 100, "x" * 50 + " here."]


def test_max_chars_must_be_positive():
    """A non-positive max_chars is rejected."""
    with pytest.raises(ValueError):
        split_sentences("Hello.", max_chars=0)


@pytest.mark.parametrize("text", ["...", "!!!", "---", "?!?! … ...", "*** ### ***", "“”"])
def test_punctuation_only_is_unspeakable(text):
    """Text with no alphanumeric character yields nothing."""
    assert split_sentences(text) == []


def test_emoji_only_is_unspeakable():
    """Emoji-only text (and emoji-only paragraphs) yield nothing."""
    assert split_sentences("😀🎉👍") == []
    assert split_sentences("Hello.\n\n😀 🎉\n\nBye.") == ["Hello.", "Bye."]


def test_emoji_inside_text_is_kept():
    """Emoji inside a speakable sentence are left in place."""
    assert split_sentences("Great job 🎉! Thanks.") == ["Great job 🎉!", "Thanks."]


def test_hebrew_text_splits():
    """Caseless right-to-left scripts split on their punctuation."""
    assert split_sentences("שלום. מה שלומך? טוב מאוד!") == ["שלום.", "מה שלומך?", "טוב מאוד!"]


def test_arabic_text_splits_including_arabic_question_mark():
    """Arabic text splits on . and the Arabic question mark."""
    assert split_sentences("مرحبا. كيف حالك؟ أنا بخير.") == ["مرحبا.", "كيف حالك؟", "أنا بخير."]


def test_cjk_terminators_split_without_spaces():
    """。！？ end sentences without a following space."""
    assert split_sentences("你好。今天天气很好！你去吗？好的") == ["你好。", "今天天气很好！", "你去吗？", "好的"]


def test_cjk_closing_brackets_stay_with_sentence():
    """CJK closing quotes after a CJK terminator belong to the sentence."""
    assert split_sentences("他说：「走吧。」我们走了。") == ["他说：「走吧。」", "我们走了。"]


def test_long_cjk_sentence_splits_at_cjk_commas():
    """A long CJK sentence without spaces is cut at its commas."""
    pieces = split_sentences("一二三四五，六七八九十，甲乙丙丁戊。", max_chars=12)
    assert pieces == ["一二三四五，六七八九十，", "甲乙丙丁戊。"]


def test_control_characters_are_stripped():
    """Non-whitespace control characters are removed without crashing."""
    assert split_sentences("He\x00llo\x07 there.\x1b Bye\x7f now.") == ["Hello there.", "Bye now."]


def test_control_characters_only_is_empty():
    """Text of nothing but control characters yields nothing."""
    assert split_sentences("\x00\x01\x07\x08\x1b\x7f") == []


def test_whitespace_control_characters_act_as_spaces():
    """Tabs, vertical tabs and form feeds are treated as whitespace."""
    assert split_sentences("One\x0btwo\x0cthree.") == ["One two three."]


def test_joined_output_matches_collapsed_input():
    """Joining the pieces with spaces gives back the whitespace-collapsed input."""
    text = (
        'Mr. Smith said "Hello!" Then he left...   Maybe.\n'
        "It cost $4.50, approx. 3 euros. Well... fine!\n\n"
        "New paragraph (with brackets.) And more? Yes."
    )
    assert " ".join(split_sentences(text)) == collapse(text)


def test_joined_output_drops_only_unspeakable_pieces():
    """Only unspeakable pieces go missing from the joined output."""
    text = "First.\n\n...\n\nSecond!\n\n😀\n\nThird?"
    assert " ".join(split_sentences(text)) == "First. Second! Third?"


def test_megabyte_of_prose_is_split():
    """A megabyte of prose is split into many sentences (speed is measured in bench/, not asserted here)."""
    paragraph = (
        "Mr. Smith met Dr. Jones at 5 p.m. on Main St. today, and they talked; it was fine. "
        '"Run!" he said. Well... maybe. Pi is 3.14, v1.2.3 costs $4.50.\n\n'
    )
    text = paragraph * (1_000_000 // len(paragraph))
    pieces = split_sentences(text)
    assert len(pieces) > 10_000


@pytest.mark.parametrize(
    "text",
    [
        "." * 1_000_000,
        "x" * 1_000_000,
        " " * 1_000_000,
        ". " * 500_000,
        "a, " * 333_333,
        "\n \n" * 333_333,
    ],
)
def test_pathological_megabyte_inputs_stay_linear(text):
    """Degenerate megabyte inputs finish (a quadratic or backtracking splitter would hang here)."""
    assert all(len(p) <= 300 for p in split_sentences(text))
