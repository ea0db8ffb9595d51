"""Cron expressions for scheduled items."""

from datetime import datetime

import pytest

from broadcaster.core.cron import parse_cron
from broadcaster.errors import BadInput

MONDAY_0955 = datetime(2026, 11, 23, 9, 55)
SATURDAY_0955 = datetime(2026, 11, 21, 9, 55)


def test_weekday_jingle_matches_weekdays_only():
    """'55 9 * * 1-5' fires at 09:55 Monday to Friday, not on Saturday or at 09:56."""
    cron = parse_cron("55 9 * * 1-5")
    assert cron.matches(MONDAY_0955)
    assert not cron.matches(SATURDAY_0955)
    assert not cron.matches(MONDAY_0955.replace(minute=56))


def test_steps_lists_and_sunday_as_seven():
    """Steps, lists and 7-for-Sunday work as in cron."""
    assert parse_cron("*/15 * * * *").minutes == frozenset({0, 15, 30, 45})
    assert parse_cron("0 8,12,18 * * *").hours == frozenset({8, 12, 18})
    assert parse_cron("0 10 * * 7").matches(datetime(2026, 11, 22, 10, 0))  # a Sunday


def test_day_of_month_or_weekday_when_both_are_restricted():
    """With both day fields set, a day matching either fires (cron's rule)."""
    cron = parse_cron("0 12 1 * 1")
    assert cron.matches(datetime(2026, 12, 1, 12, 0))  # the 1st, a Tuesday
    assert cron.matches(datetime(2026, 11, 23, 12, 0))  # a Monday


@pytest.mark.parametrize("text", ["", "* * * *", "60 * * * *", "* 24 * * *", "a * * * *", "*/0 * * * *", "5-1 * * * *"])
def test_bad_expressions_say_what_is_wrong(text):
    """Malformed expressions are refused with a message naming the problem."""
    with pytest.raises(BadInput) as caught:
        parse_cron(text)
    assert "cron" in str(caught.value)
