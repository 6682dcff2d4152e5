"""Sort keys and object keys: one place that spells them, and reads them back."""

from __future__ import annotations

import pytest

from fedasync.core import keys


def test_the_round_of_a_sync_update_key_is_read_back():
    assert keys.round_of_update_sk(keys.update_sk("silo-1", "r00000007", 7)) == 7
    assert keys.round_of_update_sk(keys.update_sk("a#b", "r00000000", 0)) == 0


@pytest.mark.parametrize(
    "sk",
    [
        keys.update_sk("silo-1", "silo-1-b00000003-s00000009", None),  # async: no round
        "UPDATE#0000001#silo-1",  # seven digits
        "UPDATE#00000001#",  # no client
        "UPDATE#0000000²#silo-1",  # a digit, but not an ASCII one
        "UPDATE#-0000001#silo-1",
        "ROUND#00000001",
        "HEARTBEAT#silo-1",
        "TASK",
    ],
)
def test_anything_else_has_no_round(sk):
    assert keys.round_of_update_sk(sk) is None
