"""``quiet_until``: when a recipient's quiet hours end, in UTC, or ``None`` outside them."""

from __future__ import annotations

import datetime as dt

import pytest

from bulletin.worker.policy import quiet_until

UTC = dt.UTC
NEW_YORK = "America/New_York"
JOHANNESBURG = "Africa/Johannesburg"


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    """An instant in UTC."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(at(2026, 6, 15, 9, 0), at(2026, 6, 15, 17, 0), id="at-start-is-inside"),
        pytest.param(at(2026, 6, 15, 12, 30), at(2026, 6, 15, 17, 0), id="middle"),
        pytest.param(at(2026, 6, 15, 16, 59), at(2026, 6, 15, 17, 0), id="last-minute"),
        pytest.param(at(2026, 6, 15, 17, 0), None, id="at-end-is-outside"),
        pytest.param(at(2026, 6, 15, 8, 59), None, id="just-before-start"),
        pytest.param(at(2026, 6, 15, 23, 0), None, id="evening"),
    ],
)
def test_window_within_one_day(now: dt.datetime, expected: dt.datetime | None) -> None:
    assert quiet_until(now, "UTC", "09:00", "17:00") == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(at(2026, 6, 15, 21, 0), at(2026, 6, 16, 8, 0), id="exactly-at-start"),
        pytest.param(at(2026, 6, 15, 23, 59), at(2026, 6, 16, 8, 0), id="before-midnight"),
        pytest.param(at(2026, 6, 16, 0, 0), at(2026, 6, 16, 8, 0), id="midnight"),
        pytest.param(at(2026, 6, 16, 3, 0), at(2026, 6, 16, 8, 0), id="after-midnight"),
        pytest.param(at(2026, 6, 16, 7, 59), at(2026, 6, 16, 8, 0), id="last-minute"),
        pytest.param(at(2026, 6, 16, 8, 0), None, id="exactly-at-end"),
        pytest.param(at(2026, 6, 16, 12, 0), None, id="midday"),
        pytest.param(at(2026, 6, 16, 20, 59), None, id="just-before-start"),
    ],
)
def test_window_crossing_midnight(now: dt.datetime, expected: dt.datetime | None) -> None:
    assert quiet_until(now, "UTC", "21:00", "08:00") == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Johannesburg is UTC+2 all year: 21:00-07:00 local is 19:00-05:00 UTC.
        pytest.param(at(2026, 6, 15, 19, 0), at(2026, 6, 16, 5, 0), id="local-start"),
        pytest.param(at(2026, 6, 15, 18, 59), None, id="local-20:59"),
        # 23:30 UTC on the 15th is already 01:30 on the 16th in Johannesburg: the window
        # ends on the local day, not on the UTC day.
        pytest.param(at(2026, 6, 15, 23, 30), at(2026, 6, 16, 5, 0), id="local-date-ahead"),
        pytest.param(at(2026, 6, 16, 5, 0), None, id="local-end"),
        pytest.param(at(2026, 6, 16, 4, 59), at(2026, 6, 16, 5, 0), id="local-06:59"),
    ],
)
def test_window_in_the_recipients_zone(now: dt.datetime, expected: dt.datetime | None) -> None:
    assert quiet_until(now, JOHANNESBURG, "21:00", "07:00") == expected


def test_local_date_behind_utc() -> None:
    # 03:00 UTC on 1 July is 23:00 on 30 June in New York (EDT, UTC-4).
    assert quiet_until(at(2026, 7, 1, 3, 0), NEW_YORK, "22:00", "07:00") == at(2026, 7, 1, 11, 0)
    # 01:00 UTC on 1 July is 21:00 on 30 June in New York: not yet quiet.
    assert quiet_until(at(2026, 7, 1, 1, 0), NEW_YORK, "22:00", "07:00") is None


def test_now_in_another_offset_gives_the_same_instant_in_utc() -> None:
    now = dt.datetime(2026, 6, 15, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    until = quiet_until(now, "UTC", "17:00", "19:00")
    assert until == at(2026, 6, 15, 19, 0)
    assert until is not None
    assert until.tzinfo == UTC


@pytest.mark.parametrize(
    ("now", "start", "end", "expected"),
    [
        # Spring forward, 2026-03-08: at 02:00 EST the clocks jump to 03:00 EDT (07:00 UTC).
        pytest.param(
            at(2026, 3, 8, 6, 30), "23:00", "02:00", at(2026, 3, 8, 7, 0), id="spring-end-02:00"
        ),
        pytest.param(
            at(2026, 3, 8, 6, 30), "23:00", "03:00", at(2026, 3, 8, 7, 0), id="spring-end-03:00"
        ),
        pytest.param(
            at(2026, 3, 8, 3, 0), "22:00", "07:00", at(2026, 3, 8, 11, 0), id="spring-07:00-EDT"
        ),
        # Fall back, 2026-11-01: at 02:00 EDT the clocks go back to 01:00 EST (06:00 UTC),
        # so 01:00-01:59 happens twice; the window ends at the first 01:30 (EDT).
        pytest.param(
            at(2026, 11, 1, 5, 0), "23:00", "01:30", at(2026, 11, 1, 5, 30), id="fall-end-01:30"
        ),
        pytest.param(
            at(2026, 11, 1, 5, 15), "23:00", "02:00", at(2026, 11, 1, 7, 0), id="fall-end-02:00"
        ),
        pytest.param(
            at(2026, 11, 1, 6, 30), "23:00", "02:00", at(2026, 11, 1, 7, 0), id="fall-second-01:30"
        ),
        pytest.param(
            at(2026, 11, 1, 3, 0), "22:00", "07:00", at(2026, 11, 1, 12, 0), id="fall-07:00-EST"
        ),
    ],
)
def test_daylight_saving_transitions_in_new_york(
    now: dt.datetime, start: str, end: str, expected: dt.datetime
) -> None:
    assert quiet_until(now, NEW_YORK, start, end) == expected


def test_window_ending_inside_the_spring_forward_gap_ends_when_the_clock_passes_it() -> None:
    # 02:30 does not exist in New York on 2026-03-08: the clocks jump from 02:00 EST to
    # 03:00 EDT (07:00 UTC), so from that instant on the local time is past the end.
    now = at(2026, 3, 8, 6, 45)  # 01:45 EST, inside 23:00-02:30
    until = quiet_until(now, NEW_YORK, "23:00", "02:30")
    # quiet_until itself says the quiet hours are over from 07:00 UTC on ...
    assert quiet_until(at(2026, 3, 8, 7, 0), NEW_YORK, "23:00", "02:30") is None
    # ... so a delivery deferred at 01:45 must not be held past that instant, or it would
    # wait behind fresh deliveries that are sent at once.
    assert until == at(2026, 3, 8, 7, 0)


SWEEP_CASES = [
    (NEW_YORK, "22:00", "07:00"),
    (NEW_YORK, "23:00", "01:30"),
    (NEW_YORK, "01:00", "03:00"),
    (JOHANNESBURG, "21:00", "06:00"),
    ("UTC", "09:00", "17:00"),
    ("Australia/Lord_Howe", "22:00", "02:00"),  # a 30-minute DST shift
]


@pytest.mark.parametrize(("zone", "start", "end"), SWEEP_CASES)
@pytest.mark.parametrize("day", [dt.date(2026, 3, 7), dt.date(2026, 4, 4), dt.date(2026, 10, 31)])
def test_answer_is_aware_utc_strictly_after_now_and_the_window_is_over_then(
    zone: str, start: str, end: str, day: dt.date
) -> None:
    begin = dt.datetime.combine(day, dt.time(0), tzinfo=UTC)
    seen_quiet = 0
    for step in range(0, 72 * 60, 7):  # three days, every seven minutes
        now = begin + dt.timedelta(minutes=step)
        until = quiet_until(now, zone, start, end)
        if until is None:
            continue
        seen_quiet += 1
        assert until.tzinfo == UTC
        assert until.utcoffset() == dt.timedelta(0)
        assert until > now
        assert until - now <= dt.timedelta(hours=25)
        assert quiet_until(until, zone, start, end) is None
    assert seen_quiet > 0
