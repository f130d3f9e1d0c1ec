"""The reply spool: bounded, atomic on disk, survives a restart of the process."""

from __future__ import annotations

from pathlib import Path

import pytest

from lfv_edge.errors import TransportError
from lfv_edge.transports.spool import DiskSpool, MemorySpool, Spool, SpooledReply, encode_entry


def _open(kind: str, folder: Path, max_bytes: int) -> Spool:
    return DiskSpool.open(folder, max_bytes) if kind == "disk" else MemorySpool(max_bytes)


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_a_full_spool_drops_the_oldest_and_counts(kind: str, tmp_path: Path) -> None:
    # given a spool of 1,000 bytes
    spool = _open(kind, tmp_path / "spool", 1000)
    # when five 300-byte replies are appended
    results = [spool.append("r", bytes([i]) * 299, 1, None) for i in range(5)]
    # then only the newest three fit; the two oldest were dropped, counted and reported
    assert spool.pending() == [3, 4, 5], f"the newest entries stay: {spool.pending()}"
    assert spool.size_bytes == 900, f"bytes are counted: {spool.size_bytes}"
    assert [r.dropped for r in results] == [(), (), (), (1,), (2,)], "each append reports its drops"
    assert spool.dropped_total == 2, "drops are counted"
    reply = spool.read(5)
    assert reply is not None, "entry 5 is readable"
    assert reply.payload == bytes([4]) * 299, "the payload is intact"


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_a_reply_larger_than_the_spool_is_refused(kind: str, tmp_path: Path) -> None:
    # given a small spool with one entry
    spool = _open(kind, tmp_path / "spool", 100)
    spool.append("r", b"x" * 10, 1, None)
    # when a reply larger than the whole spool arrives
    with pytest.raises(TransportError, match="does not fit"):
        spool.append("r", b"x" * 200, 1, None)
    # then nothing was dropped for it
    assert spool.pending() == [1], "the existing entry stays"


def test_entries_survive_a_restart_in_order_with_their_fields(tmp_path: Path) -> None:
    # given a disk spool with three replies, one acknowledged
    folder = tmp_path / "spool"
    spool = DiskSpool.open(folder, 1 << 20)
    spool.append("lfv/results", b'{"RequestId":"a"}', 1, None)
    spool.append("client/7/responses", b'{"RequestId":"b"}', 1, b"\x00corr")
    spool.append("lfv/results", b'{"RequestId":"c"}', 0, None)
    spool.remove(1)
    # when the process restarts and reopens it
    again = DiskSpool.open(folder, 1 << 20)
    # then the unacknowledged replies are there, in order, with topic, QoS and correlation data
    assert again.pending() == [2, 3], f"the remaining entries: {again.pending()}"
    assert again.read(2) == SpooledReply(
        2, "client/7/responses", b'{"RequestId":"b"}', 1, b"\x00corr"
    ), "fields round-trip"
    assert again.append("t", b"d", 1, None).reply.seq == 4, (
        "numbering continues after the last entry"
    )


def test_unfinished_and_corrupt_writes_are_removed_when_the_spool_opens(tmp_path: Path) -> None:
    # given a spool folder after a crash: a temporary file, a truncated and a bit-flipped entry
    folder = tmp_path / "spool"
    spool = DiskSpool.open(folder, 1 << 20)
    spool.append("t", b"good", 1, None)
    entry = encode_entry(SpooledReply(7, "t", b"payload", 1, None))
    (folder / ".tmp-00000000000000000002").write_bytes(entry[:10])
    (folder / "00000000000000000003.reply").write_bytes(entry[:-2])
    flipped = bytearray(entry)
    flipped[-1] ^= 0xFF
    (folder / "00000000000000000004.reply").write_bytes(bytes(flipped))
    # when it opens again
    again = DiskSpool.open(folder, 1 << 20)
    # then only the intact entry remains, and the debris is gone from disk
    assert again.pending() == [1], f"only the intact entry: {again.pending()}"
    assert sorted(p.name for p in folder.iterdir()) == ["00000000000000000001.reply"], (
        "temporary and corrupt files were removed"
    )


def test_an_append_is_one_complete_file_or_nothing(tmp_path: Path) -> None:
    # given a disk spool
    folder = tmp_path / "spool"
    spool = DiskSpool.open(folder, 1 << 20)
    # when a reply is appended
    spool.append("t", b"x" * 5000, 1, b"c")
    # then exactly one final file exists (no temporary left behind) and it decodes completely
    files = list(folder.iterdir())
    assert [f.name for f in files] == ["00000000000000000001.reply"], f"one final file: {files}"
    assert DiskSpool.open(folder, 1 << 20).read(1) == SpooledReply(1, "t", b"x" * 5000, 1, b"c"), (
        "the file holds the whole entry"
    )


def test_lowering_the_bound_drops_the_oldest_at_open(tmp_path: Path) -> None:
    # given a spool written with a large bound
    folder = tmp_path / "spool"
    spool = DiskSpool.open(folder, 1 << 20)
    for i in range(4):
        spool.append("t", bytes([i]) * 99, 1, None)
    # when it is reopened with room for two entries
    again = DiskSpool.open(folder, 250)
    # then the oldest were dropped from memory and disk
    assert again.pending() == [3, 4], f"the newest two stay: {again.pending()}"
    assert len(list(folder.iterdir())) == 2, "the dropped files are gone"


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_after_lists_entries_past_a_cursor(kind: str, tmp_path: Path) -> None:
    # given five entries, the first two removed
    spool = _open(kind, tmp_path / "spool", 1 << 20)
    for _ in range(5):
        spool.append("t", b"p", 1, None)
    spool.remove(1)
    spool.remove(2)
    # when asking what follows entry 3
    # then the later ones come oldest first, bounded by the limit
    assert spool.after(3, 10) == [4, 5], "entries after the cursor"
    assert spool.after(0, 1) == [3], "the limit bounds the answer"
    assert spool.after(5, 10) == [], "nothing after the last"
