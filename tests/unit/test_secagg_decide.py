"""The server's close of a SecAgg phase (fedasync/server/secagg_decide.py), pure: verified
answers only; a silo whose answer fails a check is left out and named, the others go on."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedasync.core.secagg import RoundContext, SecAggError, SiloSession, wire
from fedasync.core.secagg import server as srv
from fedasync.core.secagg.masked_wire import encode_masked
from fedasync.core.secagg.quantize import Quantizer
from fedasync.server import secagg_decide
from fedasync.server.secagg_io import RoundSetup

SILOS = ("a", "b", "c", "d")
CTX = RoundContext("t", 0, threshold=3)
QUANT = Quantizer(1.0, 4)


def setup_of(private):
    public = {
        c: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for c, k in private.items()
    }
    return RoundSetup(CTX, QUANT, public, SILOS)


def answers_of(messages):
    return {c: (json.dumps(m).encode(), m) for c, m in messages.items()}


def test_a_forged_advert_and_one_under_another_name_are_named_and_left_out():
    # GIVEN 4 silos, t = 3; c signs its advert with a key that is not its registered one,
    # and d's object holds b's advert (d answering in b's name)
    private = {c: Ed25519PrivateKey.generate() for c in SILOS}
    s = setup_of(private)
    sessions = {c: SiloSession(c, private[c], CTX, QUANT) for c in SILOS}
    adverts = {c: wire.encode(sessions[c].advertise()) for c in SILOS}
    adverts["c"] = wire.encode(
        SiloSession("c", Ed25519PrivateKey.generate(), CTX, QUANT).advertise()
    )
    adverts["d"] = adverts["b"]
    # WHEN the advertise phase closes THEN only a and b are in U1... below t = 3: the round fails
    with pytest.raises(SecAggError) as info:
        secagg_decide.advertise_keys(s, answers_of(adverts))
    assert info.value.reason == "secagg_below_threshold"
    assert "advertise keys: 2 silos, below the threshold t=3" in info.value.message


def test_a_forged_advert_is_named_and_the_others_make_u1():
    # GIVEN 4 registered silos and t = 2: a and b advertise properly; c signs with a key
    # that is not its registered one; d's object is not JSON; e (unregistered) answers
    # with a's advert
    ctx = RoundContext("t", 0, threshold=2)
    private = {c: Ed25519PrivateKey.generate() for c in SILOS}
    s = RoundSetup(ctx, QUANT, setup_of(private).identities, SILOS)
    adverts = {c: wire.encode(SiloSession(c, private[c], ctx, QUANT).advertise()) for c in "ab"}
    rogue = SiloSession("c", Ed25519PrivateKey.generate(), ctx, QUANT)
    adverts["c"] = wire.encode(rogue.advertise())
    adverts["e"] = adverts["a"]
    answers = {**answers_of(adverts), "d": (b"not json", None)}
    # WHEN the advertise phase closes
    decided = secagg_decide.advertise_keys(s, answers)
    # THEN U1 = {a, b}; c is named forged (its signature), d protocol (no message), e
    # forged (an answer under e's prefix in a's name)
    assert decided["members"] == ["a", "b"]
    assert decided["rejected"] == {
        "c": "secagg_forged",
        "d": "secagg_protocol",
        "e": "secagg_forged",
    }


def test_masked_inputs_are_read_as_safetensors_and_a_json_one_or_another_name_is_left_out():
    # GIVEN 4 registered silos and t = 2, keys advertised and shared; a and b send their
    # masked inputs as safetensors objects; c sends its input in the old JSON form; d's
    # object holds a's masked input (d answering in a's name)
    ctx = RoundContext("t", 0, threshold=2)
    private = {c: Ed25519PrivateKey.generate() for c in SILOS}
    s = RoundSetup(ctx, QUANT, setup_of(private).identities, SILOS)
    sessions = {c: SiloSession(c, private[c], ctx, QUANT) for c in SILOS}
    adverts = [sessions[c].advertise() for c in SILOS]
    roster = srv.verify_adverts(ctx, adverts, s.identities)
    sealed = [m for c in SILOS for m in sessions[c].share_keys(adverts, s.identities)]
    u2, inboxes = srv.route_shares(ctx, roster, sealed)
    x = {c: np.full(3, 0.25 * (i + 1)) for i, c in enumerate(SILOS)}
    masked = {c: sessions[c].masked_input(inboxes[c], x[c]) for c in SILOS}
    raws = {c: encode_masked(masked[c]) for c in "ab"}
    answers = {c: (raws[c], None) for c in "ab"}
    answers["c"] = (json.dumps(wire.encode(masked["c"])).encode(), None)
    answers["d"] = (raws["a"], None)
    # WHEN the masked-input phase closes
    decided, total = secagg_decide.masked_input(s, answers, sorted(u2), 3)
    # THEN U3 = {a, b}, with the SHA-256 of the very bytes accepted; c is named protocol
    # (not safetensors), d forged (an answer under d's prefix in a's name)
    assert decided["members"] == ["a", "b"]
    assert decided["rejected"] == {"c": "secagg_protocol", "d": "secagg_forged"}
    assert decided["sha256"] == {c: hashlib.sha256(raws[c]).hexdigest() for c in "ab"}
    # AND the masked sum is y_a + y_b mod 2^32, word by word (Python integers)
    ya, yb = masked["a"].vector.tolist(), masked["b"].vector.tolist()
    expected = [(p + q) % 2**32 for p, q in zip(ya, yb, strict=True)]
    assert total.tolist() == expected
