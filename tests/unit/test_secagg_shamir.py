"""Shamir sharing over GF(2^127 - 1): any t of n shares reconstruct, t - 1 say nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedasync.core.secagg.errors import SecAggError
from fedasync.core.secagg.shamir import PRIME, Share, interpolate, reconstruct, split


@st.composite
def sharings(draw: st.DrawFn) -> tuple[bytes, int, dict[int, Share], list[int]]:
    n = draw(st.integers(1, 12))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 0xFFFF), min_size=n, max_size=n, unique=True))
    secret = draw(st.binary(min_size=1, max_size=64))
    chosen = draw(st.permutations(xs))
    return secret, t, split(secret, xs, t), chosen


@settings(max_examples=150, deadline=None)
@given(sharings())
def test_any_t_shares_reconstruct_the_secret(case):
    # GIVEN a secret shared t of n at arbitrary distinct points
    secret, t, shares, order = case
    # WHEN any t of them (in any order) are combined
    subset = [shares[x] for x in order[:t]]
    # THEN the secret comes back, and share bytes round-trip
    assert reconstruct(subset, t, len(secret)) == secret
    assert all(Share.from_bytes(s.to_bytes(), len(secret)) == s for s in subset)


@settings(max_examples=150, deadline=None)
@given(sharings().filter(lambda c: c[1] >= 2), st.integers(1, PRIME - 1))
def test_t_minus_1_shares_and_a_forged_one_give_another_secret(case, shift):
    # GIVEN t - 1 genuine shares and a t-th share whose first value is shifted by a nonzero
    # amount (as a cheating holder would send)
    _, t, shares, order = case
    genuine = [shares[x] for x in order[: t - 1]]
    real = shares[order[t - 1]]
    forged = Share(real.x, ((real.values[0] + shift) % PRIME, *real.values[1:]))
    # WHEN they are interpolated
    honest = interpolate([*genuine, real], t)
    cheated = interpolate([*genuine, forged], t)
    # THEN the value at 0 differs from the secret's (t - 1 shares do not pin it down: the
    # forged share moves it by shift · L(0) != 0)
    assert cheated[0] != honest[0]
    assert cheated[1:] == honest[1:]


def test_t_minus_1_shares_are_consistent_with_every_secret():
    # GIVEN 2 of a 3-of-5 sharing of secret A
    shares = split(b"A" * 32, [1, 2, 3, 4, 5], 3)
    two = [shares[1], shares[2]]
    # WHEN any third point value is chosen, a polynomial through the two exists for it, so
    # for secret B there is a share at x=3 that makes the three reconstruct B
    target = int.from_bytes(b"B" * 15, "big")
    # Lagrange at 0 over x = 1, 2, 3: f(0) = 3 y1 - 3 y2 + y3 (mod p), solve for y3
    y3 = (target - 3 * two[0].values[0] + 3 * two[1].values[0]) % PRIME
    fake = Share(3, (y3, *shares[3].values[1:]))
    # THEN those shares reconstruct B's first chunk: the two genuine ones fix nothing
    assert interpolate([*two, fake], 3)[0] == target


def test_fewer_than_t_shares_are_refused():
    # GIVEN a 3-of-5 sharing  WHEN 2 shares are given  THEN reconstruct refuses
    shares = split(bytes(range(32)), range(1, 6), 3)
    with pytest.raises(SecAggError, match="2 shares cannot reconstruct") as err:
        reconstruct([shares[1], shares[4]], 3, 32)
    assert err.value.reason == "secagg_below_threshold"


def test_malformed_shares_are_refused():
    # GIVEN shares with a repeated x, a value outside the field, and the wrong size
    shares = split(bytes(32), [1, 2, 3], 2)
    outside = Share(2, (PRIME, *shares[2].values[1:]))
    # WHEN each is used  THEN each is refused
    with pytest.raises(SecAggError, match="same x"):
        reconstruct([shares[1], shares[1]], 2, 32)
    with pytest.raises(SecAggError, match="outside the field"):
        reconstruct([shares[1], outside], 2, 32)
    with pytest.raises(SecAggError, match="malformed"):
        Share.from_bytes(shares[1].to_bytes()[:-1], 32)


def test_the_share_repr_hides_its_values():
    share = split(b"secret seed", [1, 2], 2)[1]
    assert str(share.values[0]) not in repr(share)
