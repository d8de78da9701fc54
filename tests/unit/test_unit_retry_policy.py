"""``RetryPolicy.after_transient`` and ``in_doubt``: retries as decisions, not loops."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest

from bulletin.deliveries.states import DeliveryState
from bulletin.worker.policy import RetryPolicy, in_doubt

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
POLICY = RetryPolicy(max_attempts=10, base_seconds=10.0, max_seconds=300.0)


def delay_after(
    policy: RetryPolicy, attempts: int, *, seed: int = 0, retry_after: float | None = None
) -> float:
    at = policy.after_transient(attempts, NOW, retry_after=retry_after, rng=random.Random(seed))
    assert at is not None
    return (at - NOW).total_seconds()


@pytest.mark.parametrize("attempts", [10, 11, 50])
def test_over_once_the_attempts_are_spent(attempts: int) -> None:
    assert POLICY.after_transient(attempts, NOW, rng=random.Random(0)) is None


def test_not_over_one_attempt_before_the_limit() -> None:
    assert POLICY.after_transient(9, NOW, rng=random.Random(0)) is not None


def test_single_attempt_policy_never_retries() -> None:
    policy = RetryPolicy(max_attempts=1, base_seconds=10.0, max_seconds=300.0)
    assert policy.after_transient(1, NOW) is None


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [
        (1, 5.0, 10.0),
        (2, 10.0, 20.0),
        (3, 20.0, 40.0),
        (4, 40.0, 80.0),
        (5, 80.0, 160.0),
        (6, 150.0, 300.0),  # 320 is capped at 300
        (9, 150.0, 300.0),
    ],
)
def test_delay_stays_within_half_and_whole_of_the_capped_backoff(
    attempts: int, low: float, high: float
) -> None:
    for seed in range(300):
        assert low <= delay_after(POLICY, attempts, seed=seed) <= high


def test_delay_doubles_with_each_attempt_for_the_same_draw() -> None:
    delays = [delay_after(POLICY, attempts, seed=7) for attempts in range(1, 6)]
    for earlier, later in itertools.pairwise(delays):
        assert later == pytest.approx(2 * earlier)


def test_delay_is_capped_at_max_seconds() -> None:
    delays = {delay_after(POLICY, attempts, seed=3) for attempts in range(6, 10)}
    assert len(delays) == 1
    assert delays.pop() <= POLICY.max_seconds


def test_jitter_spreads_retries_across_the_allowed_range() -> None:
    delays = [delay_after(POLICY, 3, seed=seed) for seed in range(300)]
    assert min(delays) < 20.0 * 1.1
    assert max(delays) > 40.0 * 0.9
    assert len(set(delays)) > 250


def test_without_an_rng_it_still_stays_within_bounds() -> None:
    for _ in range(100):
        at = POLICY.after_transient(2, NOW)
        assert at is not None
        assert 10.0 <= (at - NOW).total_seconds() <= 20.0


def test_zero_attempts_behaves_as_the_first() -> None:
    for seed in range(50):
        assert 5.0 <= delay_after(POLICY, 0, seed=seed) <= 10.0


@pytest.mark.parametrize("retry_after", [600.0, 35.0])
def test_retry_after_longer_than_the_backoff_is_honoured(retry_after: float) -> None:
    # Attempt 2 would wait 10-20 s; the provider asked for longer, even beyond max_seconds.
    for seed in range(50):
        assert delay_after(POLICY, 2, seed=seed, retry_after=retry_after) == retry_after


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it() -> None:
    for seed in range(50):
        assert 10.0 <= delay_after(POLICY, 2, seed=seed, retry_after=1.0) <= 20.0


def test_answer_is_an_aware_instant_after_now() -> None:
    at = POLICY.after_transient(1, NOW, rng=random.Random(1))
    assert at is not None
    assert at.tzinfo is not None
    assert at > NOW


def test_a_large_attempt_budget_stays_capped() -> None:
    # A budget of a few thousand hourly retries (weeks of trying) is a valid configuration:
    # max_attempts has no upper bound in Settings.
    policy = RetryPolicy(max_attempts=5000, base_seconds=5.0, max_seconds=3600.0)
    for attempts in (1024, 1025, 2000):
        assert 1800.0 <= delay_after(policy, attempts) <= 3600.0


def test_in_doubt_with_a_deduplicating_provider_goes_back_to_pending() -> None:
    outcome = in_doubt(
        delivery_id=41,
        attempt=3,
        send_attempts=2,
        deduplicates=True,
        policy=POLICY,
        now=NOW,
        why="lease expired",
        channel="email",
    )
    assert outcome.delivery_id == 41
    assert outcome.attempt == 3
    assert outcome.state == DeliveryState.PENDING
    assert outcome.channel == "email"
    assert outcome.next_attempt_at is not None
    assert NOW + dt.timedelta(seconds=10) <= outcome.next_attempt_at
    assert outcome.next_attempt_at <= NOW + dt.timedelta(seconds=20)
    assert outcome.detail is not None
    assert "lease expired" in outcome.detail


@pytest.mark.parametrize("send_attempts", [10, 12])
def test_in_doubt_with_a_deduplicating_provider_and_no_attempts_left_is_unknown(
    send_attempts: int,
) -> None:
    outcome = in_doubt(
        delivery_id=41,
        attempt=11,
        send_attempts=send_attempts,
        deduplicates=True,
        policy=POLICY,
        now=NOW,
        why="lease expired",
        channel="sms",
    )
    assert outcome.state == DeliveryState.UNKNOWN
    assert outcome.next_attempt_at is None
    assert outcome.channel == "sms"


@pytest.mark.parametrize("send_attempts", [0, 1, 9, 10])
def test_in_doubt_without_deduplication_is_always_unknown(send_attempts: int) -> None:
    outcome = in_doubt(
        delivery_id=7,
        attempt=1,
        send_attempts=send_attempts,
        deduplicates=False,
        policy=POLICY,
        now=NOW,
        why="timed out after sending",
        channel="whatsapp",
    )
    assert outcome.delivery_id == 7
    assert outcome.attempt == 1
    assert outcome.state == DeliveryState.UNKNOWN
    assert outcome.next_attempt_at is None
    assert outcome.channel == "whatsapp"
    assert outcome.detail is not None
    assert "timed out after sending" in outcome.detail


def test_in_doubt_channel_defaults_to_none() -> None:
    outcome = in_doubt(
        delivery_id=7,
        attempt=1,
        send_attempts=1,
        deduplicates=False,
        policy=POLICY,
        now=NOW,
        why="lease expired",
    )
    assert outcome.channel is None
