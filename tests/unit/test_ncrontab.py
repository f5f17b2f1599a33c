from datetime import UTC, datetime

import pytest

from controller.ncrontab import NcrontabError, parse

pytestmark = pytest.mark.unit

START = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 */6 * * *", datetime(2026, 11, 30, 18, 0, 0, tzinfo=UTC)),
        ("*/30 * * * * *", datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)),
        ("0 5 * * * *", datetime(2026, 11, 30, 12, 5, 0, tzinfo=UTC)),
        ("0 0 9 * * SAT", datetime(2026, 12, 5, 9, 0, 0, tzinfo=UTC)),
        ("0 0 0 1 JAN *", datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)),
        ("0 0 0 29 2 *", datetime(2028, 2, 29, 0, 0, 0, tzinfo=UTC)),
        ("0 0 12 * * 0", datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)),
        ("0 0 12 * * 7", datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)),
        ("15,45 10-20/5 12 30 11 *", datetime(2026, 11, 30, 12, 10, 15, tzinfo=UTC)),
    ],
)
def test_next_occurrence(expression, expected):
    assert parse(expression).next_after(START) == expected


def test_day_of_month_or_day_of_week_when_both_are_restricted():
    schedule = parse("0 0 0 15 * FRI")
    assert schedule.next_after(START) == datetime(2026, 12, 4, tzinfo=UTC)
    assert schedule.next_after(datetime(2026, 12, 12, tzinfo=UTC)) == datetime(2026, 12, 15, tzinfo=UTC)


def test_consecutive_occurrences_are_strictly_increasing_and_match():
    schedule = parse("*/20 */7 * * * *")
    moment = START
    for _ in range(50):
        following = schedule.next_after(moment)
        assert following > moment
        assert schedule.matches(following)
        moment = following


@pytest.mark.parametrize(
    "expression",
    ["* * * * *", "60 * * * * *", "* * 24 * * *", "* * * 0 * *", "* * * * 13 *", "* * * * * 8",
     "*/0 * * * * *", "5-1 * * * * *", "a * * * * *", "1,,2 * * * * *", "0 0 0 31 2 *"],
)
def test_invalid_expressions_are_refused(expression):
    with pytest.raises(NcrontabError):
        parse(expression)
