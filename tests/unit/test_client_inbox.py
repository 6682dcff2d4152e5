"""The client's inbox: duplicates collapse, older notices are superseded, newest wins."""

from __future__ import annotations

import asyncio

import pytest

from client.inbox import Inbox, Offer
from fedasync.core.messages import GlobalModelNotice


def _notice(version: int, *, final: bool = False, mode: str = "async") -> GlobalModelNotice:
    return GlobalModelNotice(
        task_name="digits",
        mode=mode,
        version=version,
        s3_key=f"digits/global/{version:08d}.safetensors",
        sha256="ab" * 32,
        size_bytes=10,
        final=final,
    )


async def test_trainer_takes_the_newest_and_the_older_waiting_ones_are_superseded():
    # GIVEN notices v1, v3, v2 arrive while the trainer is busy
    inbox = Inbox()
    for version, receipt in ((1, "r1"), (3, "r3"), (2, "r2")):
        assert inbox.offer(_notice(version), receipt) is Offer.NEW
    # WHEN the trainer takes one
    held, superseded = await inbox.take_newest()
    # THEN it gets v3 and v1, v2 are handed back for deletion
    assert held.version == 3
    assert sorted(h.version for h in superseded) == [1, 2]
    # AND a late v2 is done at once, it will never be trained on
    assert inbox.offer(_notice(2), "r2-late") is Offer.DONE


async def test_a_duplicated_notice_joins_the_one_in_progress():
    inbox = Inbox()
    inbox.offer(_notice(4), "first")
    held, _ = await inbox.take_newest()
    # WHEN the same notice is delivered again while it is being worked on
    assert inbox.offer(_notice(4), "second") is Offer.JOINED
    # THEN both messages stay invisible while working, and both are deleted at the end
    assert sorted(inbox.receipts()) == ["first", "second"]
    assert sorted(inbox.finish(held)) == ["first", "second"]
    assert inbox.receipts() == []
    # AND once finished, another copy is simply deleted
    assert inbox.offer(_notice(4), "third") is Offer.DONE


async def test_a_duplicate_of_a_waiting_notice_joins_it():
    inbox = Inbox()
    inbox.offer(_notice(1), "a")
    assert inbox.offer(_notice(1), "b") is Offer.JOINED
    held, superseded = await inbox.take_newest()
    assert held.receipts == ["a", "b"]
    assert superseded == []


async def test_the_final_notice_outranks_any_version():
    inbox = Inbox()
    inbox.offer(_notice(9), "v9")
    inbox.offer(_notice(7, final=True), "final")
    held, superseded = await inbox.take_newest()
    assert held.notice.final
    assert [h.version for h in superseded] == [9]


async def test_take_waits_until_a_notice_arrives():
    inbox = Inbox()
    taker = asyncio.create_task(inbox.take_newest())
    await asyncio.sleep(0.01)
    assert not taker.done()
    inbox.offer(_notice(0), "r0")
    held, _ = await asyncio.wait_for(taker, 1.0)
    assert held.version == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_same_version_in_sync_and_async_is_one_entry(mode):
    inbox = Inbox()
    inbox.offer(_notice(2, mode=mode), "x")
    assert inbox.offer(_notice(2, mode=mode), "y") is Offer.JOINED
