"""The API's memory of keys it has recently found valid."""

from __future__ import annotations

import uuid

from bulletin.orgs.auth import KeyCache, Principal
from bulletin.orgs.keys import Scope, new_secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def principal() -> Principal:
    return Principal(org_id=uuid.uuid4(), scope=Scope.SEND, key_id=uuid.uuid4())


def test_a_valid_key_is_remembered_for_the_given_seconds_then_read_again() -> None:
    clock = Clock()
    cache = KeyCache(5.0, clock=clock)
    secret, who = new_secret(), principal()
    assert cache.get(secret) is None
    cache.put(secret, who)
    assert cache.get(secret) == who
    clock.now += 4.9
    assert cache.get(secret) == who
    clock.now += 0.1
    assert cache.get(secret) is None
    assert cache.get(secret) is None  # and stays forgotten until it is found valid again


def test_each_key_is_its_own_entry() -> None:
    cache = KeyCache(5.0, clock=Clock())
    first, second = new_secret(), new_secret()
    cache.put(first, who := principal())
    assert cache.get(first) == who
    assert cache.get(second) is None
    assert cache.get(first[:-1]) is None


def test_zero_seconds_remembers_nothing() -> None:
    cache = KeyCache(0.0, clock=Clock())
    secret = new_secret()
    cache.put(secret, principal())
    assert cache.get(secret) is None


def test_no_secret_is_kept_in_memory() -> None:
    cache = KeyCache(5.0, clock=Clock())
    secret = new_secret()
    cache.put(secret, principal())
    assert secret not in repr(vars(cache))


def test_a_full_cache_starts_again_and_still_answers_rightly() -> None:
    cache = KeyCache(5.0, max_keys=3, clock=Clock())
    kept = {new_secret(): principal() for _ in range(7)}
    for secret, who in kept.items():
        cache.put(secret, who)
        assert cache.get(secret) == who
    assert len(vars(cache)["_kept"]) <= 3
    for secret, who in kept.items():
        assert cache.get(secret) in (who, None)
