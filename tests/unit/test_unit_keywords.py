"""Opt-out, opt-in and help keywords in replies: whole-message matches only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulletin.channels.keywords import classify

STOP_WORDS = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "OPT-OUT",
    "OPT OUT",
]
START_WORDS = ["START", "YES", "UNSTOP", "OPTIN", "SUBSCRIBE"]
HELP_WORDS = ["HELP", "INFO"]


@pytest.mark.parametrize("word", STOP_WORDS)
def test_every_opt_out_keyword_is_a_stop(word: str) -> None:
    assert classify(word) == "stop"
    assert classify(word.lower()) == "stop"
    assert classify(word.title()) == "stop"


@pytest.mark.parametrize("word", START_WORDS)
def test_every_opt_in_keyword_is_a_start(word: str) -> None:
    assert classify(word) == "start"
    assert classify(word.lower()) == "start"


@pytest.mark.parametrize("word", HELP_WORDS)
def test_help_keywords(word: str) -> None:
    assert classify(word) == "help"
    assert classify(word.lower()) == "help"


@pytest.mark.parametrize(
    "text",
    [
        "  stop  ",
        "Stop.",
        "STOP!!!",
        "\tstop\n",
        '"stop"',
        "¡Stop!",
        "...stop...",
        "opt  out",
        "Opt\nOut",
        "Opt-Out.",
        "\uff33\uff34\uff2f\uff30",  # full-width "STOP", as some keyboards type it
        "stop\u200b",  # a zero-width space pasted along
    ],
)
def test_whitespace_punctuation_and_case_around_the_keyword_do_not_matter(text: str) -> None:
    assert classify(text) == "stop"


@pytest.mark.parametrize(
    "text",
    [
        "stop sending me this",
        "please stop",
        "don't stop",
        "stopp",
        "st op",
        "yes please",
        "help me",
        "optout now",
        "opt_out",
        "",
        "   ",
        "!!!",
        "🛑",
        "thanks",
    ],
)
def test_anything_but_a_whole_keyword_is_none(text: str) -> None:
    assert classify(text) is None


@given(st.text())
def test_classify_never_raises_and_answers_a_known_value(text: str) -> None:
    assert classify(text) in {"stop", "start", "help", None}


@given(
    st.sampled_from(STOP_WORDS + START_WORDS + HELP_WORDS),
    st.text(alphabet=" \t\n.,!?;:'\"()-", max_size=5),
    st.text(alphabet=" \t\n.,!?;:'\"()-", max_size=5),
)
def test_any_padding_of_a_keyword_keeps_its_meaning(word: str, before: str, after: str) -> None:
    assert classify(before + word + after) == classify(word)


@given(st.sampled_from(STOP_WORDS), st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1))
def test_a_keyword_followed_by_another_word_is_not_a_keyword(word: str, other: str) -> None:
    assert classify(f"{word} {other}") is None
