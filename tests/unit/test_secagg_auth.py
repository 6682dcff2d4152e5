"""SecAgg's authentication: forged signatures and tampered ciphertexts are refused, named."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedasync.core.secagg import RoundContext, SecAggError, SiloSession, crypto
from fedasync.core.secagg import server as srv
from fedasync.core.secagg.messages import EncryptedShares, SurvivorSignature
from tests.unit.test_secagg_round import CTX, QUANT, SILOS, Round, identity_keys, updates


def test_a_forged_advert_signature_is_rejected_and_named():
    # GIVEN the silos' registered identities, and an advert of bank-3 signed by another key
    private, public = identity_keys(SILOS)
    impostor = SiloSession("bank-3", Ed25519PrivateKey.generate(), CTX, QUANT)
    adverts = [SiloSession(n, private[n], CTX, QUANT).advertise() for n in SILOS if n != "bank-3"]
    adverts.append(impostor.advertise())
    # WHEN the server checks the adverts
    # THEN bank-3's is refused as forged
    with pytest.raises(SecAggError, match="signature of silo 'bank-3' on its keys") as err:
        srv.verify_adverts(CTX, adverts, public)
    assert (err.value.reason, err.value.culprit) == ("secagg_forged", "bank-3")


def test_an_advert_with_swapped_keys_or_of_another_round_is_rejected():
    # GIVEN a genuine advert of bank-1 for round 3
    private, public = identity_keys(SILOS)
    advert = SiloSession("bank-1", private["bank-1"], CTX, QUANT).advertise()
    swapped = dataclasses.replace(advert, channel_pk=advert.mask_pk, mask_pk=advert.channel_pk)
    other_round = RoundContext(CTX.task_name, CTX.round_id + 1, CTX.threshold)
    # WHEN its keys are swapped by the relay, or it is replayed in round 4
    # THEN neither verifies
    for ctx, message in ((CTX, swapped), (other_round, advert)):
        with pytest.raises(SecAggError) as err:
            srv.verify_adverts(ctx, [message], public)
        assert err.value.reason == "secagg_forged"


def test_an_unregistered_silo_is_refused():
    # GIVEN identities without bank-9
    _, public = identity_keys(SILOS)
    stranger = SiloSession("bank-9", Ed25519PrivateKey.generate(), CTX, QUANT)
    # WHEN bank-9 advertises  THEN it is refused by name
    with pytest.raises(SecAggError, match="'bank-9' is not registered"):
        srv.verify_adverts(CTX, [stranger.advertise()], public)


def _tamper(message: EncryptedShares) -> EncryptedShares:
    raw = bytearray(message.ciphertext)
    raw[20] ^= 0x40
    return dataclasses.replace(message, ciphertext=bytes(raw))


def test_a_tampered_share_ciphertext_is_rejected_by_its_recipient():
    # GIVEN a round after share keys
    rnd = Round(updates(seed=4, length=8))
    inboxes = rnd.advertise_and_share()
    inbox = inboxes["bank-1"]
    # WHEN the relay flips one bit of bank-2's ciphertext to bank-1
    inbox = [_tamper(m) if m.sender == "bank-2" else m for m in inbox]
    # THEN bank-1 refuses it as tampered, naming the sender
    with pytest.raises(SecAggError, match="from silo 'bank-2' fails authentication") as err:
        rnd.sessions["bank-1"].masked_input(inbox, np.zeros(8))
    assert (err.value.reason, err.value.culprit) == ("secagg_tampered", "bank-2")


def test_a_share_ciphertext_redirected_to_another_silo_is_rejected():
    # GIVEN bank-2's sealed shares for bank-1
    rnd = Round(updates(seed=4, length=8))
    inboxes = rnd.advertise_and_share()
    for_bank1 = next(m for m in inboxes["bank-1"] if m.sender == "bank-2")
    # WHEN the relay relabels it as addressed to bank-3 and delivers it there
    redirected = dataclasses.replace(for_bank1, recipient="bank-3")
    inbox = [redirected if m.sender == "bank-2" else m for m in inboxes["bank-3"]]
    # THEN bank-3 cannot open it (the key and the associated data bind the recipient)
    with pytest.raises(SecAggError) as err:
        rnd.sessions["bank-3"].masked_input(inbox, np.zeros(8))
    assert err.value.reason == "secagg_tampered"


def test_a_forged_survivor_signature_is_rejected():
    # GIVEN a round after the masked inputs
    rnd = Round(updates(seed=4, length=8))
    rnd.mask(rnd.advertise_and_share(), drop_before=set())
    u3 = frozenset(rnd.masked)
    sigs = [rnd.sessions[n].consistency(u3) for n in SILOS]
    # WHEN bank-5's signature is replaced by one over a different list
    other = crypto.sign(Ed25519PrivateKey.generate(), b"another list")
    forged = [*sigs[:4], SurvivorSignature("bank-5", other)]
    # THEN the server and every silo refuse it, naming bank-5
    with pytest.raises(SecAggError, match="'bank-5' on its survivor list") as err:
        srv.verify_survivor_signatures(CTX, u3, forged, rnd.identities)
    assert err.value.culprit == "bank-5"
    with pytest.raises(SecAggError) as err:
        rnd.sessions["bank-1"].unmask(forged, rnd.identities)
    assert err.value.reason == "secagg_forged"


def test_an_incomplete_share_set_leaves_its_sender_out_of_u2():
    # GIVEN a round where bank-5 seals shares for only some of its peers
    rnd = Round(updates(seed=4, length=8))
    adverts = [s.advertise() for s in rnd.sessions.values()]
    roster = srv.verify_adverts(CTX, adverts, rnd.identities)
    sealed = [m for s in rnd.sessions.values() for m in s.share_keys(adverts, rnd.identities)]
    partial = [m for m in sealed if not (m.sender == "bank-5" and m.recipient == "bank-1")]
    # WHEN the server routes them
    u2, inboxes = srv.route_shares(CTX, roster, partial)
    # THEN bank-5 is not in U2 and nobody receives its shares
    assert u2 == frozenset(SILOS) - {"bank-5"}
    assert all(m.sender != "bank-5" for box in inboxes.values() for m in box)


def test_a_masked_input_altered_after_signing_is_rejected():
    # GIVEN every silo's masked input
    rnd = Round(updates(seed=4, length=8))
    inboxes = rnd.advertise_and_share()
    sent = [rnd.sessions[n].masked_input(inboxes[n], rnd.updates[n]) for n in SILOS]
    # WHEN one word of bank-2's is changed on the way (its signature kept)
    vec = sent[1].vector.copy()
    vec[0] ^= np.uint32(1)
    altered = dataclasses.replace(sent[1], vector=vec)
    # THEN the server refuses it as forged, naming bank-2
    with pytest.raises(SecAggError, match="'bank-2' on its masked input") as err:
        srv.masked_inputs(
            CTX,
            rnd.u2,
            messages=[sent[0], altered, *sent[2:]],
            quantizer=QUANT,
            length=8,
            identities=rnd.identities,
        )
    assert (err.value.reason, err.value.culprit) == ("secagg_forged", "bank-2")


def test_a_server_showing_two_survivor_lists_gets_no_shares():
    # GIVEN a round after the masked inputs of all 5 silos
    rnd = Round(updates(seed=13, length=8))
    rnd.mask(rnd.advertise_and_share(), drop_before=set())
    everyone = frozenset(SILOS)
    # WHEN the server tells bank-1 that everyone survived but tells the others that
    # bank-2 dropped (to get b_2's share from bank-1 and s_2^SK's from the others)
    told_one = rnd.sessions["bank-1"].consistency(everyone)
    others = [rnd.sessions[n].consistency(everyone - {"bank-2"}) for n in SILOS[2:]]
    # THEN bank-1 sees the others' signatures do not cover its list and reveals nothing
    with pytest.raises(SecAggError) as err:
        rnd.sessions["bank-1"].unmask([told_one, *others], rnd.identities)
    assert err.value.reason == "secagg_forged"
    # AND the others refuse bank-1's signature (on the other list) the same way
    with pytest.raises(SecAggError) as err:
        rnd.sessions["bank-3"].unmask([told_one, *others], rnd.identities)
    assert (err.value.reason, err.value.culprit) == ("secagg_forged", "bank-1")
