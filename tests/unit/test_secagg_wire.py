"""SecAgg messages on the wire: JSON-ready dicts, read back strictly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedasync.core.secagg import SecAggError
from fedasync.core.secagg import server as srv
from fedasync.core.secagg.messages import KeyAdvert, MaskedInput
from fedasync.core.secagg.wire import decode, encode
from tests.unit.test_secagg_round import SILOS, Round, oracle_ring_sum, updates


def through_json(message):
    return decode(json.loads(json.dumps(encode(message))))


def test_an_advert_encodes_to_hand_checked_base64():
    # GIVEN an advert with all-zero, all-0x01 keys and an all-0x02 signature
    advert = KeyAdvert("bank-1", bytes(32), b"\x01" * 32, b"\x02" * 64)
    # WHEN encoded  THEN each byte field is standard base64 (32 zero bytes: 43 'A' and '=')
    assert encode(advert) == {
        "schema_version": 1,
        "kind": "key_advert",
        "client_id": "bank-1",
        "channel_pk": "A" * 43 + "=",
        "mask_pk": "AQEB" * 10 + "AQE=",
        "signature": "AgIC" * 21 + "Ag==",
    }
    assert through_json(advert) == advert


def test_a_whole_round_through_json_still_gives_the_exact_sum():
    # GIVEN a round of 5 in which every message crosses the wire as JSON
    data = updates(seed=14, length=16)
    rnd = Round(data)
    adverts = [through_json(s.advertise()) for s in rnd.sessions.values()]
    rnd.roster = srv.verify_adverts(rnd.ctx, adverts, rnd.identities)
    sealed = [
        through_json(m)
        for s in rnd.sessions.values()
        for m in s.share_keys(adverts, rnd.identities)
    ]
    rnd.u2, inboxes = srv.route_shares(rnd.ctx, rnd.roster, sealed)
    sent = [through_json(rnd.sessions[n].masked_input(inboxes[n], data[n])) for n in SILOS[1:]]
    rnd.masked = srv.masked_inputs(
        rnd.ctx, rnd.u2, messages=sent, quantizer=rnd.quant, length=16, identities=rnd.identities
    )
    u3 = frozenset(rnd.masked)
    sigs = [through_json(rnd.sessions[n].consistency(u3)) for n in sorted(u3)]
    unmaskings = [through_json(rnd.sessions[n].unmask(sigs, rnd.identities)) for n in sorted(u3)]
    # WHEN the server unmasks
    result = rnd.close(unmaskings)
    # THEN the sum of the 4 survivors is exact, and bank-1 (no masked input) is dropped
    assert result.dropped == ("bank-1",)
    assert result.total.tolist() == oracle_ring_sum([data[n] for n in SILOS[1:]], 1.0, 5, 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(kind="nope"), "not a SecAgg message"),
        (lambda d: d.update(schema_version=2), "not a SecAgg message"),
        (lambda d: d.update(extra="x"), "has fields"),
        (lambda d: d.pop("signature"), "has fields"),
        (lambda d: d.update(signature="***"), "not valid base64"),
        (lambda d: d.update(vector="AAAAAAA="), "not uint32/uint64 words"),
        (lambda d: d.update(dtype="float32"), "not uint32/uint64 words"),
        (lambda d: d.update(client_id=7), "not a string"),
    ],
)
def test_a_malformed_message_is_refused(change, message):
    # GIVEN a masked input on the wire, spoiled in one way
    data = encode(MaskedInput("bank-1", np.arange(3, dtype=np.uint32), b"\x00" * 64))
    change(data)
    # WHEN it is read  THEN it is refused as a protocol error, saying why
    with pytest.raises(SecAggError, match=message) as err:
        decode(data)
    assert err.value.reason == "secagg_protocol"
