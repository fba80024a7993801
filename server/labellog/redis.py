"""The scale-out label log: Redis Streams with consumer groups, shared by every replica.

Layout, per topic (``{topic}`` is a cluster hash tag, so a topic's keys share one slot):

    <prefix>:{<topic>}:log    the stream; offset k is entry id ``<k+1>-0``
    <prefix>:{<topic>}:next   the offset counter (= records ever appended)
    <prefix>:{<topic>}:state  a hash of checkpoint blobs (save_state/load_state)

Needs Redis >= 7.0 (XAUTOCLAIM, XPENDING IDLE, XCLAIM dropping trimmed entries).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from pseudostream.server.errors import ConfigError, InvalidInput, PseudostreamError
from pseudostream.server.labellog.base import LabelBatch, LabelLog, LabelRecord

# The row codec is shared with the SQLite log, so both validate and encode batches alike.
from pseudostream.server.labellog._rows import batch_rows as _batch_rows
from pseudostream.server.labellog._rows import to_record as _to_record

__all__ = ["RedisLabelLog"]

# Row fields in _batch_rows order (after the offset); None values are left out of the entry.
_FIELDS = (b"sid", b"label", b"conf", b"weight", b"thr", b"ver", b"pol", b"at",
           b"sample", b"shape", b"dtype", b"meta", b"cls")
_DECODE: tuple[Callable[[bytes], Any], ...] = (
    bytes.decode, int, float, float, float, bytes.decode, bytes.decode, float,
    bytes, bytes.decode, bytes.decode, bytes.decode, bytes.decode)

# KEYS: stream, counter. ARGV: max_len ('' for none), n, then per record its value count k and
# k alternating field names and values. Returns the first offset.
_APPEND = """
local n = tonumber(ARGV[2])
local first = redis.call('INCRBY', KEYS[2], n) - n
local pos = 3
for i = 1, n do
  local k = tonumber(ARGV[pos])
  redis.call('XADD', KEYS[1], string.format('%d-0', first + i), unpack(ARGV, pos + 1, pos + k))
  pos = pos + k + 1
end
if ARGV[1] ~= '' then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1]) end
return first
"""

# KEYS: stream, counter. ARGV: group, consumer, max records, visibility ms.
# Returns {end offset, {{id, deliveries, fields}, ...}}: own claimable, others' claimable, new.
_READ = """
local stream, group, me, vis = KEYS[1], ARGV[1], ARGV[2], ARGV[4]
local want = tonumber(ARGV[3])
local made = redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
if made.err and not string.find(made.err, 'BUSYGROUP', 1, true) then
  return redis.error_reply(made.err)
end
local out = {}
local function deliver(entries, counts)
  for _, e in ipairs(entries) do
    local n = counts[e[1]] or redis.call('XPENDING', stream, group, e[1], e[1], 1)[1][4]
    out[#out + 1] = {e[1], n, e[2]}
  end
end
local own, counts = {}, {}
for _, p in ipairs(redis.call('XPENDING', stream, group, 'IDLE', vis, '-', '+', want, me)) do
  own[#own + 1] = p[1]
  counts[p[1]] = p[4] + 1
end
for i = 1, #own, 500 do
  local args = {'XCLAIM', stream, group, me, vis}
  for j = i, math.min(i + 499, #own) do args[#args + 1] = own[j] end
  deliver(redis.call(unpack(args)), counts)
end
local cursor = '0-0'
while #out < want do
  local r = redis.call('XAUTOCLAIM', stream, group, me, vis, cursor, 'COUNT', want - #out)
  deliver(r[2], {})
  cursor = r[1]
  if cursor == '0-0' then break end
end
if #out < want then
  local r = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', want - #out,
                       'STREAMS', stream, '>')
  if r then
    for _, e in ipairs(r[1][2]) do out[#out + 1] = {e[1], 1, e[2]} end
  end
end
return {tonumber(redis.call('GET', KEYS[2]) or 0), out}
"""

# KEYS: stream. ARGV: group, consumer, visibility ms. Sets the consumer's pending entries idle
# for the visibility timeout (JUSTID keeps their delivery counts). Returns how many.
_RELEASE = """
if redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1).err then return 0 end
local released, start = 0, '-'
while true do
  local page = redis.call('XPENDING', KEYS[1], ARGV[1], start, '+', 500, ARGV[2])
  if #page == 0 then return released end
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, p in ipairs(page) do args[#args + 1] = p[1] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[3]
  args[#args + 1] = 'JUSTID'
  released = released + #redis.call(unpack(args))
  start = '(' .. page[#page][1]
end
"""

# KEYS: stream, counter. ARGV: group.
# Returns {end offset, 0} for an unknown group, else
# {end offset, 1, last-delivered id, pending count, lowest pending id (nil if none)}.
_GROUP = """
local last = tonumber(redis.call('GET', KEYS[2]) or 0)
if redis.call('EXISTS', KEYS[1]) == 0 then return {last, 0} end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == ARGV[1] then
    local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
    return {last, 1, info['last-delivered-id'], summary[1], summary[2]}
  end
end
return {last, 0}
"""


class RedisLabelLog(LabelLog):
    """A :class:`LabelLog` on Redis Streams, shared by any number of service replicas.

    Offsets come from a per-topic counter incremented atomically with the XADDs (one Lua script
    per append), so replicas appending concurrently get unique, gap-free offsets. Offset ``k``
    is stored as entry id ``<k+1>-0`` (ids must be above ``0-0``).

    Consumer groups are Redis consumer groups; ``deliveries`` is the pending-entries list's
    delivery counter. Each ``read`` runs one script: the consumer's own claimable pending
    entries (XPENDING IDLE + XCLAIM), then others' (XAUTOCLAIM), then new ones (XREADGROUP).
    A pending entry is claimable once idle for ``visibility_timeout_s``; ``release`` makes a
    consumer's entries claimable at once by setting their idle time to the visibility timeout
    (XCLAIM ... IDLE JUSTID). Unlike the SQLite log there is no restart rule: Redis outlives
    any one replica, so a pending entry may belong to a live stream on another replica.

    Waiting reads block on XREAD past the topic's last entry, for at most ``poll_interval_s``
    at a time, then look again for claimable entries. ``max_len`` trims each stream
    approximately (``MAXLEN ~``, whole stream nodes) after an append; offsets keep counting.
    Retention by age is not offered: ids are offsets, not times. Records trimmed away are
    gone, even while pending: their next redelivery drops them from the pending list. Durability
    is Redis's (AOF/replication settings). An instance is used from one event loop.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "pseudostream",
        visibility_timeout_s: float = 30.0,
        max_len: int | None = None,
        max_age_s: float | None = None,
        poll_interval_s: float = 0.05,
    ) -> None:
        if max_age_s is not None and max_age_s <= 0:
            raise ConfigError(f"max_age_s must be > 0 (or None for no limit), got {max_age_s}")
        self.max_age_s = max_age_s
        if not visibility_timeout_s > 0 or not poll_interval_s > 0:
            raise ConfigError("visibility_timeout_s and poll_interval_s must be > 0 seconds")
        if max_len is not None and max_len < 1:
            raise ConfigError(f"max_len must be at least 1 (or None for no limit), got {max_len}")
        self.url = _redact(url)
        self.prefix = prefix
        self.visibility_timeout_s = float(visibility_timeout_s)
        self.max_len = max_len
        self.poll_interval_s = float(poll_interval_s)
        self._visibility_ms = max(1, round(self.visibility_timeout_s * 1000))
        self._closed = False
        try:
            self._redis = aioredis.Redis.from_url(url, decode_responses=False)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {self.url!r}: {exc}") from exc
        self._append = self._redis.register_script(_APPEND)
        self._read = self._redis.register_script(_READ)
        self._release = self._redis.register_script(_RELEASE)
        self._group = self._redis.register_script(_GROUP)

    # ----------------------------------------------------------------- LabelLog interface

    async def append(self, topic: str, batch: LabelBatch) -> np.ndarray:
        """Append ``batch`` atomically; returns the offsets given to its rows."""
        args: list[Any] = ["" if self.max_len is None else self.max_len, len(batch)]
        for row in _batch_rows(batch, time.time()):
            fields = [x for name, value in zip(_FIELDS, row) if value is not None
                      for x in (name, _encode(value))]
            args += [len(fields), *fields]
        if len(batch) == 0:
            return np.empty(0, dtype=np.int64)
        first = await self._call("append", self._append, keys=self._keys(topic), args=args)
        if self.max_age_s is not None:
            await self._call("append", self._trim_age, self._keys(topic)[0])
        return np.arange(first, first + len(batch), dtype=np.int64)

    async def _trim_age(self, log_key: str) -> None:
        """Age retention: XTRIM MINID at the first entry younger than ``max_age_s`` (ids are
        offsets, not times, so the cut is found by walking the stream's oldest entries)."""
        cutoff, start = time.time() - float(self.max_age_s or 0), "-"
        while True:
            entries = await self._redis.xrange(log_key, start, "+", count=64)
            if not entries:
                break
            young = [i for i, fields in entries if float(fields[b"at"]) >= cutoff]
            if young:
                await self._redis.xtrim(log_key, minid=young[0].decode(), approximate=False)
                return
            start = f"({entries[-1][0].decode()}"
        last = await self._redis.xrevrange(log_key, "+", "-", count=1)
        if last:  # everything is old: keep nothing
            await self._redis.xtrim(log_key, minid=f"{_offset(last[0][0]) + 2}-0",
                                    approximate=False)

    async def read(self, topic: str, group: str, consumer: str, max_records: int, wait_s: float = 0.0,
                   samples: bool = True) -> list[LabelRecord]:
        """Deliver up to ``max_records``: own claimable pending, others' claimable pending,
        then new records; waits up to ``wait_s`` for at least one (see the class docstring).
        A stream entry comes whole, so ``samples`` changes nothing here."""
        if max_records < 1:
            raise InvalidInput(f"max_records must be at least 1, got {max_records}")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(wait_s, 0.0)
        keys = self._keys(topic)
        while True:
            end, entries = await self._call(
                "read", self._read, keys=keys,
                args=[group, consumer, max_records, self._visibility_ms])
            remaining = give_up - loop.time()
            if entries or remaining <= 0:
                return [_to_record((_offset(i), *_decode(f)), n) for i, n, f in entries]
            block_ms = max(1, round(min(remaining, self.poll_interval_s) * 1000))
            # Wakes on any entry past the last one this read saw; the id of offset end-1.
            await self._call("read", self._redis.xread, {keys[0]: f"{end}-0"}, count=1,
                             block=block_ms)

    async def ack(self, topic: str, group: str, offsets: Sequence[int]) -> int:
        """XACK ``offsets``; returns how many were pending."""
        ids = [f"{int(o) + 1}-0" for o in offsets if int(o) >= 0]  # no entry has id <= 0-0
        stream = self._keys(topic)[0]
        acked = 0
        for i in range(0, len(ids), 1000):
            acked += await self._call("ack", self._redis.xack, stream, group, *ids[i : i + 1000])
        return acked

    async def release(self, topic: str, group: str, consumer: str) -> int:
        """Make ``consumer``'s pending records claimable now; returns how many."""
        return await self._call("release", self._release, keys=self._keys(topic)[:1],
                                args=[group, consumer, self._visibility_ms])

    async def committed(self, topic: str, group: str) -> int:
        """Lowest pending offset of the group, else its delivered cursor (0 if unknown)."""
        _, cursor, lowest, _ = await self._group_info(topic, group)
        return cursor if lowest is None else lowest

    async def end_offset(self, topic: str) -> int:
        """Records ever appended to ``topic`` (0 for an unknown topic)."""
        value = await self._call("end_offset", self._redis.get, self._keys(topic)[1])
        return 0 if value is None else int(value)

    async def lag(self, topic: str, group: str) -> int:
        """Records not acked by the group: never delivered plus pending. Records trimmed by
        ``max_len`` before the group read them count until it reads past them."""
        end, cursor, _, pending = await self._group_info(topic, group)
        return end - cursor + pending

    async def get(self, topic: str, offsets: Sequence[int]) -> list[LabelRecord]:
        """The records at ``offsets`` in the order given; missing (trimmed) ones are skipped."""
        log_key = self._keys(topic)[0]

        async def fetch() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for o in offsets:
                    pipe.xrange(log_key, f"{int(o) + 1}-0", f"{int(o) + 1}-0")
                return await pipe.execute()

        found = await self._call("get", fetch) if offsets else []
        return [_to_record((_offset(i), *_decode([x for kv in f.items() for x in kv])), 0)
                for entries in found for i, f in entries]

    async def remember(self, topic: str, entries: Mapping[str, bytes], ttl_s: float) -> None:
        """Keep ``entries`` (sample id -> blob) for ``ttl_s`` seconds, one expiring key each."""
        base = self._keys(topic)[3]
        ttl_ms = max(1, round(ttl_s * 1000))

        async def store() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid, blob in entries.items():
                    pipe.set(f"{base}:{sid}", bytes(blob), px=ttl_ms)
                await pipe.execute()

        if entries:
            await self._call("remember", store)

    async def recall(self, topic: str, ids: Sequence[str]) -> dict[str, bytes]:
        """The unexpired blobs remembered for ``ids``."""
        if not ids:
            return {}
        base = self._keys(topic)[3]
        values = await self._call("recall", self._redis.mget, [f"{base}:{sid}" for sid in ids])
        return {sid: v for sid, v in zip(ids, values) if v is not None}

    async def save_state(self, topic: str, key: str, blob: bytes) -> None:
        """Store ``blob`` under (topic, key), replacing any earlier one."""
        await self._call("save_state", self._redis.hset, self._keys(topic)[2], key, bytes(blob))

    async def load_state(self, topic: str, key: str) -> bytes | None:
        """The blob stored under (topic, key), or None."""
        return await self._call("load_state", self._redis.hget, self._keys(topic)[2], key)

    async def list_state(self, topic: str, prefix: str) -> dict[str, bytes]:
        """Blobs of ``topic`` whose key starts with ``prefix`` (HSCAN of the state hash)."""

        async def scan() -> dict[str, bytes]:
            pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
            return {k.decode(): v async for k, v in
                    self._redis.hscan_iter(self._keys(topic)[2], match=pattern)}

        return await self._call("list_state", scan)

    async def delete_state(self, topic: str, keys: Sequence[str]) -> None:
        """Remove these keys of ``topic``."""
        if keys:
            await self._call("delete_state", self._redis.hdel, self._keys(topic)[2], *keys)

    async def close(self) -> None:
        """Close the connection pool; later calls raise RuntimeError."""
        if self._closed:
            return
        self._closed = True
        await self._redis.aclose()

    # ---------------------------------------------------------------------------- helpers

    def _keys(self, topic: str) -> list[str]:
        base = f"{self.prefix}:{{{topic}}}"
        return [f"{base}:log", f"{base}:next", f"{base}:state", f"{base}:recent"]

    async def _group_info(self, topic: str, group: str) -> tuple[int, int, int | None, int]:
        """(end offset, the group's cursor, its lowest pending offset or None, pending count);
        an unknown group has cursor 0 and nothing pending."""
        info = await self._call("group_info", self._group, keys=self._keys(topic)[:2],
                                args=[group])
        if not info[1]:
            return int(info[0]), 0, None, 0
        pending = int(info[3])
        lowest = _offset(info[4]) if pending else None
        return int(info[0]), _offset(info[2]) + 1, lowest, pending

    async def _call(self, op: str, fn: Callable[..., Awaitable[Any]], *args: Any,
                    **kwargs: Any) -> Any:
        if self._closed:
            raise RuntimeError("label log is closed")
        try:
            return await fn(*args, **kwargs)
        except RedisConnectionError as exc:
            raise PseudostreamError(
                f"label log {op} failed: cannot reach Redis at {self.url}. Redis must be "
                f"reachable from the service: start it, or fix the label log's url ({exc})"
            ) from exc
        except RedisError as exc:
            raise PseudostreamError(f"label log {op} failed on Redis at {self.url}: {exc}") from exc


def _encode(value: Any) -> bytes | str:
    if isinstance(value, bytes):
        return value
    return repr(value) if isinstance(value, float) else str(value)


def _decode(flat: list[bytes]) -> tuple[Any, ...]:
    """Entry fields (name, value, name, value, ...) as a _batch_rows row; absent -> None."""
    fields = dict(zip(flat[::2], flat[1::2]))
    return tuple(None if name not in fields else dec(fields[name])
                 for name, dec in zip(_FIELDS, _DECODE))


def _offset(entry_id: bytes | str) -> int:
    """Offset of stream entry id ``<offset+1>-0``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) - 1


def _redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
