"""A whole SecAgg round (Bonawitz et al. 2017, rounds 0-4), silos and server in one process.

The oracle for the exact ring sum is computed here with Python integers from the stated
formula (q = round(x · Q / R), Q = floor((2^31 - 1) / n), the sum mod 2^32), not by the
quantiser under test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedasync.core.secagg import RoundContext, SecAggError, SiloSession, UnmaskResult, unmask
from fedasync.core.secagg import server as srv
from fedasync.core.secagg.messages import KeyAdvert, MaskedInput, RevealedShare, Unmasking
from fedasync.core.secagg.quantize import Quantizer

SILOS = ("bank-1", "bank-2", "bank-3", "bank-4", "bank-5")
CTX = RoundContext("digits", 3, threshold=3)
QUANT = Quantizer(clip=1.0, max_silos=5)


def identity_keys(names: Sequence[str]) -> tuple[dict[str, Ed25519PrivateKey], dict[str, bytes]]:
    private = {n: Ed25519PrivateKey.generate() for n in names}
    public = {
        n: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for n, k in private.items()
    }
    return private, public


@dataclass
class Round:
    """One round driven phase by phase; `drop_*` name the silos that stop answering."""

    updates: Mapping[str, np.ndarray]
    ctx: RoundContext = CTX
    quant: Quantizer = QUANT
    sessions: dict[str, SiloSession] = field(default_factory=dict)
    identities: dict[str, bytes] = field(default_factory=dict)
    roster: dict[str, KeyAdvert] = field(default_factory=dict)
    u2: frozenset[str] = frozenset()
    masked: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        private, self.identities = identity_keys(list(self.updates))
        self.sessions = {n: SiloSession(n, private[n], self.ctx, self.quant) for n in self.updates}

    def advertise_and_share(self) -> dict[str, list]:
        adverts = [s.advertise() for s in self.sessions.values()]
        self.roster = srv.verify_adverts(self.ctx, adverts, self.identities)
        sealed = [m for s in self.sessions.values() for m in s.share_keys(adverts, self.identities)]
        self.u2, inboxes = srv.route_shares(self.ctx, self.roster, sealed)
        return inboxes

    def mask(self, inboxes: Mapping[str, list], drop_before: set[str]) -> list[MaskedInput]:
        sent = [
            self.sessions[n].masked_input(inboxes[n], self.updates[n])
            for n in sorted(self.u2 - drop_before)
        ]
        length = next(iter(self.updates.values())).size
        self.masked = srv.masked_inputs(
            self.ctx,
            self.u2,
            messages=sent,
            quantizer=self.quant,
            length=length,
            identities=self.identities,
        )
        return sent

    def reveal(self, drop_after: set[str]) -> list[Unmasking]:
        u3 = frozenset(self.masked)
        answering = sorted(u3 - drop_after)
        sigs = [self.sessions[n].consistency(u3) for n in answering]
        sigs = srv.verify_survivor_signatures(self.ctx, u3, sigs, self.identities)
        return [self.sessions[n].unmask(sigs, self.identities) for n in answering]

    def close(self, unmaskings: Sequence[Unmasking]) -> UnmaskResult:
        return unmask(
            self.ctx,
            quantizer=self.quant,
            roster=self.roster,
            u2=self.u2,
            masked=self.masked,
            unmaskings=unmaskings,
            identities=self.identities,
        )

    def run(self, drop_before: set[str], drop_after: set[str]) -> UnmaskResult:
        inboxes = self.advertise_and_share()
        self.mask(inboxes, drop_before)
        return self.close(self.reveal(drop_after))


def oracle_ring_sum(vectors: Sequence[np.ndarray], clip: float, n: int, bits: int) -> list[int]:
    levels = ((1 << (bits - 1)) - 1) // n
    out = []
    for coords in zip(*(v.tolist() for v in vectors), strict=True):
        total = sum(round(max(-clip, min(clip, x)) * levels / clip) for x in coords)
        out.append(total % (1 << bits))
    return out


def updates(seed: int, length: int, scale: float = 0.3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # test data only, not a mask
    return {n: rng.normal(0.0, scale, length).astype(np.float32) for n in SILOS}


def test_five_silos_one_drops_before_and_one_after_masked_input():
    # GIVEN 5 silos with t = 3, b = 32, R = 1, updates of 1000 coordinates (a few clipped)
    data = updates(seed=7, length=1000, scale=0.5)
    # WHEN bank-2 drops after sharing its keys (no masked input) and bank-4 after sending
    # its masked input (no unmask), and the round is played to the end
    result = Round(data).run(drop_before={"bank-2"}, drop_after={"bank-4"})
    # THEN the survivors are U3 = all but bank-2; bank-2 is the one reported dropped
    survivors = [n for n in SILOS if n != "bank-2"]
    assert result.survivors == tuple(survivors)
    assert result.dropped == ("bank-2",)
    assert result.rejected == {}
    # AND the ring sum is exactly the survivors' quantised sum (hand oracle, Python ints)
    expected = oracle_ring_sum([data[n] for n in survivors], 1.0, 5, 32)
    assert result.total.tolist() == expected
    # AND the dequantised sum is within m·Δ/2 of the float sum of the clipped updates
    clipped = np.clip(np.stack([data[n].astype(np.float64) for n in survivors]), -1, 1)
    bound = 4 * (1.0 / ((2**31 - 1) // 5)) / 2
    assert QUANT.sum_error_bound(4) == pytest.approx(bound)
    assert np.max(np.abs(result.values - clipped.sum(axis=0))) <= bound * (1 + 1e-9)


def test_no_dropout_gives_the_sum_of_all_five():
    # GIVEN 5 silos, nobody drops
    data = updates(seed=11, length=64)
    # WHEN the round runs
    result = Round(data).run(drop_before=set(), drop_after=set())
    # THEN the sum is over all five, exactly
    assert result.dropped == ()
    assert result.total.tolist() == oracle_ring_sum(list(data.values()), 1.0, 5, 32)


def test_masked_inputs_look_uniform_and_uncorrelated_with_the_plaintext():
    # GIVEN 5 silos with updates of 100 000 coordinates
    data = updates(seed=3, length=100_000)
    rnd = Round(data)
    # WHEN each sends its masked input
    sent = rnd.mask(rnd.advertise_and_share(), drop_before=set())
    for message in sent:
        y = message.vector.astype(np.float64)
        x = data[message.client_id].astype(np.float64)
        q = QUANT.quantize(x).astype(np.float64)
        # THEN its correlation with the update, and with the quantised update, is ~0:
        # |r| < 5/sqrt(d) = 0.016 (a 5-sigma bound for independent vectors)
        assert abs(np.corrcoef(y, x)[0, 1]) < 0.016
        assert abs(np.corrcoef(y, q)[0, 1]) < 0.016
        # AND it is spread over the whole ring: mean 2^31 and each top-4-bit bucket ~1/16
        # (each within 5 sigma of a uniform variable's)
        assert abs(y.mean() / 2**32 - 0.5) < 5 * (1 / np.sqrt(12 * y.size))
        buckets = np.bincount((message.vector >> np.uint32(28)).astype(np.int64), minlength=16)
        expected, sigma = y.size / 16, np.sqrt(y.size / 16 * 15 / 16)
        assert np.all(np.abs(buckets - expected) < 5 * sigma)


def test_fewer_than_t_masked_inputs_fail_the_round_clearly():
    # GIVEN 5 silos with t = 3
    rnd = Round(updates(seed=1, length=8))
    inboxes = rnd.advertise_and_share()
    # WHEN three drop before sending their masked input
    # THEN the masked-input phase fails: below the threshold, with the counts
    with pytest.raises(SecAggError, match=r"masked input: 2 silos, below the threshold t=3") as err:
        rnd.mask(inboxes, drop_before={"bank-1", "bank-2", "bank-3"})
    assert err.value.reason == "secagg_below_threshold"


def test_fewer_than_t_unmasking_silos_fail_the_round_not_a_wrong_sum():
    # GIVEN a round where every silo sent its masked input
    rnd = Round(updates(seed=2, length=8))
    rnd.mask(rnd.advertise_and_share(), drop_before=set())
    unmaskings = rnd.reveal(drop_after=set())
    # WHEN only two of them answer the unmask phase
    # THEN unmasking refuses (fewer than t shares per silo), no sum is produced
    with pytest.raises(SecAggError, match="fewer than t=3 valid shares") as err:
        rnd.close(unmaskings[:2])
    assert err.value.reason == "secagg_below_threshold"


def _alter(unmasking: Unmasking) -> Unmasking:
    first = unmasking.shares[0]
    raw = bytearray(first.share)
    raw[-1] ^= 1
    bad = RevealedShare(first.dealer, first.holder, first.kind, bytes(raw), first.dealer_signature)
    return Unmasking(unmasking.client_id, (bad, *unmasking.shares[1:]))


def test_a_wrong_share_is_detected_and_named_and_the_round_still_closes_above_t():
    # GIVEN a round of 5 where bank-2 dropped before its masked input, 4 silos unmask
    data = updates(seed=5, length=32)
    rnd = Round(data)
    rnd.mask(rnd.advertise_and_share(), drop_before={"bank-2"})
    unmaskings = rnd.reveal(drop_after=set())
    # WHEN bank-3 alters one of the shares it reveals
    cheated = [_alter(u) if u.client_id == "bank-3" else u for u in unmaskings]
    result = rnd.close(cheated)
    # THEN bank-3 is named with the reason, and the sum is still the exact one
    assert result.rejected == {"bank-3": "secagg_bad_share"}
    survivors = [n for n in SILOS if n != "bank-2"]
    assert result.total.tolist() == oracle_ring_sum([data[n] for n in survivors], 1.0, 5, 32)


def test_a_wrong_share_at_the_threshold_fails_the_round_with_that_cause():
    # GIVEN a round where only 3 = t silos unmask
    rnd = Round(updates(seed=6, length=8))
    rnd.mask(rnd.advertise_and_share(), drop_before=set())
    unmaskings = rnd.reveal(drop_after={"bank-4", "bank-5"})
    # WHEN bank-1 alters a share
    cheated = [_alter(u) if u.client_id == "bank-1" else u for u in unmaskings]
    # THEN the round fails below the threshold, naming bank-1 and its reason
    with pytest.raises(SecAggError, match=r"'bank-1' \(secagg_bad_share\)") as err:
        rnd.close(cheated)
    assert err.value.reason == "secagg_below_threshold"
    assert err.value.culprit == "bank-1"


def test_a_silo_never_reveals_both_shares_of_one_peer():
    # GIVEN a round where bank-2 sent its masked input and bank-1 signed U3 = everyone
    rnd = Round(updates(seed=8, length=8))
    rnd.mask(rnd.advertise_and_share(), drop_before=set())
    everyone = frozenset(SILOS)
    rnd.sessions["bank-1"].consistency(everyone)
    # WHEN the server then claims bank-2 dropped (to get s_2^SK's share as well as b_2's)
    # THEN bank-1 refuses
    with pytest.raises(SecAggError, match="second, different survivor list") as err:
        rnd.sessions["bank-1"].consistency(everyone - {"bank-2"})
    assert err.value.reason == "secagg_refused"


def test_the_server_refuses_an_unmasking_that_reveals_a_survivors_key_share():
    # GIVEN a round where nobody dropped, and bank-1's unmasking
    rnd = Round(updates(seed=9, length=8))
    rnd.mask(rnd.advertise_and_share(), drop_before=set())
    unmaskings = rnd.reveal(drop_after=set())
    # WHEN bank-1's unmasking also carries a (made-up) key share of survivor bank-2
    first = unmaskings[0]
    extra = RevealedShare("bank-2", first.client_id, "mask_key", first.shares[1].share, b"")
    both = Unmasking(first.client_id, (*first.shares, extra))
    result = rnd.close([both, *unmaskings[1:]])
    # THEN bank-1's unmasking is refused as a whole and named; the other 4 close the round
    assert result.rejected == {"bank-1": "secagg_refused"}
    assert result.survivors == SILOS


def test_a_retried_masked_input_is_the_same_and_a_different_one_is_refused():
    # GIVEN a silo that sent its masked input
    data = updates(seed=10, length=16)
    rnd = Round(data)
    inboxes = rnd.advertise_and_share()
    session = rnd.sessions["bank-1"]
    first = session.masked_input(inboxes["bank-1"], data["bank-1"])
    # WHEN it is asked again for the same update (an at-least-once retry)
    again = session.masked_input(inboxes["bank-1"], data["bank-1"])
    # THEN it answers the same y; for another update it refuses (the two masked inputs
    # would differ by exactly the difference of the updates)
    assert (again.vector == first.vector).all()
    with pytest.raises(SecAggError, match="second, different masked input") as err:
        session.masked_input(inboxes["bank-1"], data["bank-1"] + 0.5)
    assert err.value.reason == "secagg_refused"


def test_no_secret_shows_in_a_repr_or_an_error():
    # GIVEN a round through its unmask phase
    rnd = Round(updates(seed=12, length=4))
    rnd.mask(rnd.advertise_and_share(), drop_before=set())
    unmaskings = rnd.reveal(drop_after=set())
    session = rnd.sessions["bank-1"]
    revealed = unmaskings[0].shares[0]
    # WHEN the session, a revealed share, and an error about a bad share are printed
    with pytest.raises(SecAggError) as err:
        rnd.close([_alter(u) for u in unmaskings[:3]])
    printed = " ".join([repr(session), repr(revealed), str(err.value)])
    # THEN none holds the self-mask seed, a share's bytes or its hex
    assert session._seed.hex() not in printed
    assert revealed.share.hex() not in printed
    assert str(revealed.share) not in printed
    assert "not shown" in repr(session)


def test_a_retried_share_keys_deals_the_same_shares_and_another_roster_is_refused():
    # GIVEN a silo that dealt its shares for a roster of 5
    rnd = Round(updates(seed=15, length=4))
    adverts = [s.advertise() for s in rnd.sessions.values()]
    session = rnd.sessions["bank-1"]
    first = session.share_keys(adverts, rnd.identities)
    # WHEN it is asked again with the same adverts, then with bank-5 left out
    again = session.share_keys(adverts, rnd.identities)
    # THEN the retry gets the very same sealed messages; the other roster is refused
    assert again == first
    with pytest.raises(SecAggError, match="second, different roster") as err:
        session.share_keys(adverts[:4], rnd.identities)
    assert err.value.reason == "secagg_refused"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_dropout_pattern_gives_the_exact_sum_or_a_clear_failure(data):
    # GIVEN n silos (3..7), a threshold t, and silos dropping before and after their
    # masked input, all drawn at random
    n = data.draw(st.integers(3, 7))
    t = data.draw(st.integers(2, n))
    silos = [f"s{i}" for i in range(n)]
    before = set(data.draw(st.lists(st.sampled_from(silos), unique=True, max_size=n)))
    after = set(data.draw(st.lists(st.sampled_from(silos), unique=True, max_size=n)))
    after -= before
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))  # test data only
    updates_ = {s: rng.uniform(-1.5, 1.5, 6) for s in silos}
    ctx = RoundContext("prop", 1, threshold=t)
    rnd = Round(updates_, ctx=ctx, quant=Quantizer(clip=1.0, max_silos=n))
    survivors = [s for s in silos if s not in before]
    answering = [s for s in survivors if s not in after]
    # WHEN the round is played
    if len(survivors) < t or len(answering) < t:
        # THEN below the threshold in a phase it fails, saying so
        with pytest.raises(SecAggError) as err:
            rnd.run(drop_before=before, drop_after=after)
        assert err.value.reason == "secagg_below_threshold"
    else:
        # THEN otherwise the ring sum is the survivors' quantised sum exactly
        result = rnd.run(drop_before=before, drop_after=after)
        assert result.survivors == tuple(survivors)
        assert result.dropped == tuple(sorted(before))
        assert result.total.tolist() == oracle_ring_sum(
            [updates_[s] for s in survivors], 1.0, n, 32
        )
