"""A masked input on the wire: safetensors of the ring's words, its envelope in the header.

Oracles: the bytes laid out by hand (the safetensors format: an 8-byte little-endian
header length, the JSON header, the raw little-endian words), and the safetensors library
itself reading what `encode_masked` wrote.
"""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest
import safetensors.numpy

from fedasync.core.secagg import SecAggError
from fedasync.core.secagg import server as srv
from fedasync.core.secagg.masked_wire import decode_masked, encode_masked
from fedasync.core.secagg.messages import MaskedInput
from tests.unit.test_secagg_round import CTX, QUANT, SILOS, Round, oracle_ring_sum, updates

SIG = b"\x02" * 64
SIG_B64 = "AgIC" * 21 + "Ag=="  # 64 bytes of 0x02, standard base64


def envelope(**change):
    body = {"client_id": "bank-1", "kind": "masked_input", "schema_version": 2}
    body["signature"] = SIG_B64
    body.update(change)
    return json.dumps(body, sort_keys=True)


def object_of(header: dict, data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data


def by_hand(words: bytes, dtype="U32", shape=None, meta=None, extra=None) -> bytes:
    shape = [len(words) // 4] if shape is None else shape
    header = {
        "__metadata__": {"fedasync.secagg": envelope()} if meta is None else meta,
        "masked_input": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(words)]},
        **(extra or {}),
    }
    return object_of(header, words)


WORDS = bytes.fromhex("01000000ffffffff04030201")  # 1, 2^32 - 1, 0x01020304


def test_a_masked_input_is_its_words_behind_a_safetensors_header_laid_out_by_hand():
    # GIVEN a masked input of three uint32 words and a 64-byte signature
    vec = np.array([1, 2**32 - 1, 0x01020304], dtype=np.uint32)
    # WHEN encoded
    raw = encode_masked(MaskedInput("bank-1", vec, SIG))
    # THEN it is byte for byte the object laid out by hand: the 12 words last, as they are
    assert raw == by_hand(WORDS)
    assert raw.endswith(WORDS)
    # AND the safetensors library reads the same words
    assert safetensors.numpy.load(raw)["masked_input"].tolist() == [1, 2**32 - 1, 0x01020304]


def test_reading_views_the_words_in_place_without_a_copy():
    # GIVEN the object of a masked input
    raw = by_hand(WORDS)
    # WHEN read
    got = decode_masked(raw)
    # THEN the message is the one written, its vector a read-only view on the bytes read
    assert (got.client_id, got.signature) == ("bank-1", SIG)
    assert got.vector.dtype == np.uint32 and got.vector.tolist() == [1, 2**32 - 1, 0x01020304]
    assert np.shares_memory(got.vector, np.frombuffer(raw, np.uint8))
    assert not got.vector.flags.writeable


def test_a_whole_round_through_the_binary_masked_inputs_gives_the_exact_sum():
    # GIVEN a round of 5 whose masked inputs cross the wire as safetensors objects
    data = updates(seed=21, length=16)
    rnd = Round(data)
    inboxes = rnd.advertise_and_share()
    sent = [
        decode_masked(encode_masked(rnd.sessions[n].masked_input(inboxes[n], data[n])))
        for n in SILOS
    ]
    # WHEN the server checks them and unmasks
    rnd.masked = srv.masked_inputs(
        CTX, rnd.u2, messages=sent, quantizer=QUANT, length=16, identities=rnd.identities
    )
    u3 = frozenset(rnd.masked)
    sigs = [rnd.sessions[n].consistency(u3) for n in sorted(u3)]
    result = rnd.close([rnd.sessions[n].unmask(sigs, rnd.identities) for n in sorted(u3)])
    # THEN the sum of all five is exact (a Python-integer oracle)
    assert result.total.tolist() == oracle_ring_sum([data[n] for n in SILOS], 1.0, 5, 32)


def test_one_word_changed_in_the_object_fails_the_signature_and_names_the_silo():
    # GIVEN every silo's masked input as an object, one byte of bank-2's words flipped
    rnd = Round(updates(seed=22, length=8))
    inboxes = rnd.advertise_and_share()
    raws = [encode_masked(rnd.sessions[n].masked_input(inboxes[n], rnd.updates[n])) for n in SILOS]
    spoiled = bytearray(raws[1])
    spoiled[-1] ^= 1
    raws[1] = bytes(spoiled)
    # WHEN read (the object is well formed) and checked
    # THEN bank-2 is refused as forged: the signature covers the SHA-256 of the exact words
    with pytest.raises(SecAggError, match="'bank-2' on its masked input") as err:
        srv.masked_inputs(
            CTX,
            rnd.u2,
            messages=[decode_masked(r) for r in raws],
            quantizer=QUANT,
            length=8,
            identities=rnd.identities,
        )
    assert (err.value.reason, err.value.culprit) == ("secagg_forged", "bank-2")


def test_words_of_the_wrong_width_or_count_are_refused_by_the_round():
    # GIVEN bank-1's genuine masked input, then re-sent as uint64 words or one word short
    rnd = Round(updates(seed=23, length=8))
    inboxes = rnd.advertise_and_share()
    sent = {n: rnd.sessions[n].masked_input(inboxes[n], rnd.updates[n]) for n in SILOS}
    wide = dataclasses.replace(sent["bank-1"], vector=sent["bank-1"].vector.astype(np.uint64))
    short = dataclasses.replace(sent["bank-1"], vector=sent["bank-1"].vector[:-1])
    for bad in (wide, short):
        # WHEN it crosses the wire and the server checks the inputs
        messages = [decode_masked(encode_masked(bad)), *(sent[n] for n in SILOS[1:])]
        # THEN it is refused as a protocol error naming bank-1
        with pytest.raises(SecAggError, match="is not 8 ring elements") as err:
            srv.masked_inputs(
                CTX, rnd.u2, messages=messages, quantizer=QUANT, length=8,
                identities=rnd.identities,
            )  # fmt: skip
        assert (err.value.reason, err.value.culprit) == ("secagg_protocol", "bank-1")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not a safetensors object"),
        (b'{"schema_version": 1, "kind": "masked_input"}', "header"),  # the old JSON form
        (by_hand(WORDS)[:-1], "needs 12 bytes"),  # truncated
        (by_hand(WORDS, dtype="F32"), "dtype 'F32'"),
        (by_hand(WORDS, dtype="I32"), "dtype 'I32'"),
        (by_hand(WORDS, shape=[1, 3]), "exactly one 1-d tensor"),
        (by_hand(b"", shape=[0]), "holds no words"),
        (
            by_hand(WORDS[:8], extra={"x": {"dtype": "U32", "shape": [1], "data_offsets": [8, 12]}})
            + WORDS[8:],
            "exactly one 1-d tensor",
        ),
        (by_hand(WORDS, meta={}), "no 'fedasync.secagg' envelope"),
        (by_hand(WORDS, meta={"fedasync.secagg": envelope(), "x": "y"}), "envelope"),
        (by_hand(WORDS, meta={"fedasync.secagg": "[1"}), "not valid JSON"),
        (by_hand(WORDS, meta={"fedasync.secagg": '{"a": {"b": 1}}'}), "nests 2 levels"),
        (by_hand(WORDS, meta={"fedasync.secagg": envelope(extra=1)}), "has fields"),
        (by_hand(WORDS, meta={"fedasync.secagg": envelope(schema_version=1)}), "version 1"),
        (by_hand(WORDS, meta={"fedasync.secagg": envelope(kind="unmasking")}), "'unmasking'"),
        (by_hand(WORDS, meta={"fedasync.secagg": envelope(client_id=7)}), "not a string"),
        (by_hand(WORDS, meta={"fedasync.secagg": envelope(signature="***")}), "valid base64"),
        (by_hand(WORDS, meta={"fedasync.secagg": envelope(signature=7)}), "base64 string"),
    ],
)
def test_a_malformed_masked_input_object_is_refused_saying_why(raw, message):
    # GIVEN an object under a silo's masked-input key, malformed in one way
    # WHEN it is read  THEN it is refused as a protocol error, with the reason
    with pytest.raises(SecAggError, match=message) as err:
        decode_masked(raw)
    assert err.value.reason == "secagg_protocol"
