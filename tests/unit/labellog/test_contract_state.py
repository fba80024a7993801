"""The LabelLog contract, what it keeps beside records: state blobs by key and prefix, and
idempotency entries remembered within their window."""

from __future__ import annotations

import asyncio

import numpy as np

from pseudostream.server.labellog.entries import DecisionEntries


async def test_state_round_trips_and_is_none_when_absent(log):
    assert await log.load_state("t", "policy") is None
    await log.save_state("t", "policy", b"\x00one")
    await log.save_state("t", "policy", b"\x00two")
    await log.save_state("u", "policy", b"other topic")
    assert await log.load_state("t", "policy") == b"\x00two"
    assert await log.load_state("u", "policy") == b"other topic"
    assert await log.load_state("t", "adapter") is None


async def test_remember_and_recall_within_the_window(log):
    await log.remember("t", {"a": b"first", "b": b"x"}, ttl_s=0.4)
    await log.remember("u", {"a": b"other topic"}, ttl_s=10)
    assert await log.recall("t", ["a", "c"]) == {"a": b"first"}
    assert await log.recall("u", ["a"]) == {"a": b"other topic"}
    await asyncio.sleep(0.5)
    assert await log.recall("t", ["a", "b"]) == {}  # expired


async def test_append_and_remember_names_the_offsets_it_gave(log, make_batch):
    await log.append("t", make_batch(3, prefix="before"))
    seen: list[list[int]] = []

    def entries(offsets: np.ndarray) -> dict[str, bytes]:
        seen.append(offsets.tolist())
        return {f"s{i}": str(o).encode() for i, o in enumerate(offsets.tolist())} | {"rejected": b"-1"}

    got = await log.append_and_remember("t", make_batch(2), entries, ttl_s=10)
    assert got.tolist() == [3, 4] and seen == [[3, 4]]
    assert await log.recall("t", ["s0", "s1", "rejected", "nope"]) == {"s0": b"3", "s1": b"4",
                                                                          "rejected": b"-1"}
    assert [r.sample_id for r in await log.get("t", [3, 4])] == ["s0", "s1"]
    # Nothing accepted: only the entries; no entries (window 0): only the records.
    assert (await log.append_and_remember("t", None, lambda o: {"r2": b"-1"}, ttl_s=10)).size == 0
    assert await log.recall("t", ["r2"]) == {"r2": b"-1"} and await log.end_offset("t") == 5
    assert (await log.append_and_remember("t", make_batch(1, prefix="z"), None, ttl_s=10)).tolist() == [5]


async def test_list_and_delete_state_by_prefix(log):
    await log.save_state("t", "sync/1/a", b"1a")
    await log.save_state("t", "sync/1/b", b"1b")
    await log.save_state("t", "sync/2/a", b"2a")
    await log.save_state("t", "policy", b"p")
    await log.save_state("u", "sync/1/a", b"other topic")
    assert await log.list_state("t", "sync/1/") == {"sync/1/a": b"1a", "sync/1/b": b"1b"}
    assert await log.list_state("t", "sync/*") == {}  # the prefix is literal
    await log.delete_state("t", ["sync/1/a", "missing"])
    assert set(await log.list_state("t", "sync/")) == {"sync/1/b", "sync/2/a"}
    assert await log.load_state("t", "policy") == b"p"


async def test_decision_entries_are_remembered_blob_by_blob(log, make_batch):
    """What the pipeline hands over: ids and their blobs end to end (one packed fixed size, one
    of varying sizes, an empty blob among them); each id recalls its own blob."""
    fixed = DecisionEntries.fixed(["f0", "f1", "f2"], b"aaabbbccc", 3)
    varied = DecisionEntries.of({"v0": b"", "v1": b"\x01\x02", "v2": b"{\"a\":1}"})
    got = await log.append_and_remember("t", make_batch(2), lambda offsets: fixed, ttl_s=10)
    assert got.tolist() == [0, 1]
    await log.remember("t", varied, ttl_s=10)
    assert await log.recall("t", ["f2", "f0", "v0", "v1", "v2", "x"]) == {
        "f0": b"aaa", "f2": b"ccc", "v0": b"", "v1": b"\x01\x02", "v2": b"{\"a\":1}"}
