"""API key secrets and scopes."""

from __future__ import annotations

import re

import pytest

from bulletin.orgs.keys import KEY_PREFIX, Scope, digest, display_prefix, new_secret

ALLOWED = {
    (Scope.ADMIN, Scope.ADMIN),
    (Scope.ADMIN, Scope.SEND),
    (Scope.ADMIN, Scope.READ),
    (Scope.SEND, Scope.SEND),
    (Scope.SEND, Scope.READ),
    (Scope.READ, Scope.READ),
}
PAIRS = [(held, required) for held in Scope for required in Scope]


@pytest.mark.parametrize(("held", "required"), PAIRS, ids=[f"{h}-needs-{r}" for h, r in PAIRS])
def test_scope_allows_itself_and_the_scopes_below(held: Scope, required: Scope) -> None:
    assert held.allows(required) is ((held, required) in ALLOWED)


def test_new_secret_is_prefixed_and_url_safe_with_256_bits() -> None:
    secret = new_secret()
    assert secret.startswith("bk_")
    # 32 random bytes in unpadded URL-safe base64 are 43 characters.
    assert re.fullmatch(r"bk_[A-Za-z0-9_-]{43}", secret)


def test_the_shown_prefix_tells_keys_apart() -> None:
    # The prefix is what a key list shows; it carries enough of the random part to differ.
    secrets = [new_secret() for _ in range(1000)]
    assert len({display_prefix(secret) for secret in secrets}) == 1000


def test_digest_is_hex_sha256() -> None:
    # The SHA-256 test vector of "abc" (FIPS 180-2).
    assert digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_digest_is_deterministic_and_does_not_contain_the_secret() -> None:
    secret = new_secret()
    value = digest(secret)
    assert digest(secret) == value
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert secret[len(KEY_PREFIX) :] not in value
    assert digest(new_secret()) != value


def test_display_prefix_is_stable_and_hides_most_of_the_secret() -> None:
    secret = new_secret()
    shown = display_prefix(secret)
    assert display_prefix(secret) == shown
    assert secret.startswith(shown)
    assert shown.startswith(KEY_PREFIX)
    assert len(shown) > len(KEY_PREFIX)
    # At least 32 of the 43 random characters (192 bits) stay hidden.
    assert len(secret) - len(shown) >= 32
