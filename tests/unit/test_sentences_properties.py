from hypothesis import example, given, settings
from hypothesis import strategies as st

from tts.sentences import split_complete, split_sentences

# Arbitrary Unicode rarely hits the interesting paths, so also draw from an
# alphabet dense in terminators, quotes, breaks, abbreviation letters and
# assorted scripts.
SENTENCE_ALPHABET = (
    "aAbBeEgiIjJmMnNoOrRsStTx019 .....!!??…;:,,—-\"'“”‘’()[]\n\n\t\r。！？，、「」😀אבجد\x00\x07\x7f\u00a0"
)
texts = st.one_of(
    st.text(),
    st.text(alphabet=SENTENCE_ALPHABET, max_size=600),
    st.lists(st.sampled_from(["Mr.", "e.g.", "J.", "3.14", "Hi!", "no.", "x" * 90, "\n\n", "..."])).map(" ".join),
)
limits = st.integers(min_value=20, max_value=400)


def alnum_chars(text):
    return [char for char in text if char.isalnum()]


@settings(max_examples=300, deadline=None)
@given(texts, limits)
def test_pieces_are_nonempty_stripped_and_fit(text, max_chars):
    """Every piece is non-empty, stripped, speakable and at most max_chars long."""
    for piece in split_sentences(text, max_chars=max_chars):
        assert piece and piece == piece.strip()
        assert len(piece) <= max_chars
        assert any(char.isalnum() for char in piece)


@settings(max_examples=300, deadline=None)
@given(texts, limits)
def test_alphanumerics_are_preserved_in_order(text, max_chars):
    """Every alphanumeric character of the input appears in the output, in order."""
    pieces = split_sentences(text, max_chars=max_chars)
    assert alnum_chars("".join(pieces)) == alnum_chars(text)


@settings(max_examples=300, deadline=None)
@given(texts, limits)
def test_pieces_have_no_whitespace_runs_or_newlines(text, max_chars):
    """Pieces contain single spaces only: no newlines, tabs or doubled spaces."""
    for piece in split_sentences(text, max_chars=max_chars):
        assert piece.split() == piece.split(" ")


def is_subsequence(needles, haystack):
    remaining = iter(haystack)
    return all(any(item == candidate for candidate in remaining) for item in needles)


short_words = st.text(alphabet="abcABC019.,;:!?\"'()", min_size=1, max_size=12)
separators = st.sampled_from([" ", "   ", "\n", "\n\n", "\t", " - ", " — "])
plain_texts = st.lists(st.tuples(short_words, separators)).map(lambda pairs: "".join(word + gap for word, gap in pairs))


@settings(max_examples=300, deadline=None)
@given(plain_texts, limits)
def test_joined_output_is_collapsed_input_minus_unspeakable_words(text, max_chars):
    """Short words: joined pieces are the collapsed input minus unspeakable pieces."""
    joined_words = " ".join(split_sentences(text, max_chars=max_chars)).split()
    input_words = text.split()
    assert is_subsequence(joined_words, input_words)
    spoken = [word for word in joined_words if alnum_chars(word)]
    assert spoken == [word for word in input_words if alnum_chars(word)]


@settings(max_examples=300, deadline=None)
@given(texts, limits, st.lists(st.integers(min_value=0, max_value=600), max_size=8))
@example("::: :0", 20, [5])  # punctuation taken alone would have been dropped before its sentence came
@example("00000\r\x1b0", 20, [7])  # a rest of only a control character proves no boundary
def test_text_streamed_in_pieces_is_spoken_as_the_whole_text(text, max_chars, cuts):
    """Appending a text piece by piece, taking the complete sentences each time and closing at the
    end, speaks exactly the sentences of the whole text: nothing taken early changes afterwards."""
    spoken, tail, last = [], "", 0
    for cut in sorted(c for c in cuts if c <= len(text)):
        done, tail = split_complete(tail + text[last:cut], max_chars)
        spoken += done
        last = cut
    spoken += split_sentences(tail + text[last:], max_chars)
    assert spoken == split_sentences(text, max_chars)
