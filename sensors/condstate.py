"""Partial condition state of a multi-dependency sensor: kept in memory, written through
to the sensor's JetStream key-value bucket, O(1) bucket work per event.

Who uses it: :class:`sensors.runner.SensorRunner` (condition path), under its lock, so
one replica handles one event at a time. The bucket is the durable copy (a restart
between dependency A and B still fires once B arrives) and the channel between
replicas: several sensor replicas share each dependency's durable consumer, so A may
reach one replica and B another.

Why not "write, then read the bucket": listing a bucket's keys opens a consumer per
read and reads every key, so each event cost O(keys) and a 50-dependency sensor ran
into the server's consumer limit. Here every event costs one write; nothing is read
unless another replica wrote in between, and then only what it wrote.

Design: the bucket is read as an ordered log (a KV bucket is a stream; a revision is a
stream sequence, the same total order for every reader).

* An event of dependency ``d`` for trigger ``t`` is written under its own key
  ``c.<t>.<d>.<hash of event id>`` (a redelivered event hits the same key).
* Every replica applies the log in revision order with one deterministic rule: an
  entry becomes the latest event of ``(t, d)``; when the entries of ``t`` then satisfy
  its condition, that revision *completes a round*: those events fire together and
  ``t``'s state starts empty. Replicas applying the same log agree on every round, so
  exactly one replica, the writer of the completing entry, fires it.
* After writing, a replica reads the records between the last one it applied and its
  own (none when nobody else wrote: the common case costs no read), applies them and
  its own, and fires the rounds its own entries completed.
* After firing (or dead-lettering) the firer writes ``t``'s marker ``m.<t>`` =
  ``{"upto": U, "done": {round: [entry revisions]}, "ids": {dep: event id}}`` with a
  revision check (a lost check re-reads the marker and merges): every entry at or
  below ``U`` is consumed, and so are those of the rounds in ``done`` (rounds above
  ``U`` fired while an earlier one is still being fired elsewhere). Then it purges the
  round's entries, or everything of ``t`` below ``U`` when ``U`` moved (purges leave
  no markers, so the bucket does not grow with the events it has seen). The
  marker is written before any purge, so a reader that finds records missing from the
  range it reads (a gap) first reads the markers and ignores entries they cover: what
  it then applies is exactly what a reader without gaps would apply.
* An entry superseded by a later event of the same dependency (latest wins) is purged
  by the writer of the later one.
* Read back (all records, one request each, no consumer) only at start, after a state
  error, or when a write's revision shows the bucket was lost. A round found complete
  with no marker covering it was not known to be fired: its writer crashed or is still
  firing, so it is fired again (takeover). A redelivered event that belongs to such a
  round (its writer died before acking) fires the round here. The firing key is the
  same either way, so idempotent targets see one object.
* Redelivery does not double-fire: an event already stored, or named by the marker or
  among the last fired events kept in memory, is not stored again.
* ``conditionsReset``: a tick writes a marker covering everything read so far (with no
  ids, so an unmarked round stays pending) and purges; the catch-up at start writes
  deletion markers for the old events only (readers see them in order).

Memory: per trigger one event per dependency, the rounds waiting for another replica's
marker, and a bounded set of recently fired event ids.

Limits: a takeover while the original writer is alive but slow (retrying beyond the
bus's ack wait) fires the round twice with the same firing key: idempotent creates see
one object, an ``http`` or ``log`` trigger runs twice (at-least-once). A reset tick
while another replica fires a round leaves that round to the replicas that hold it in
memory; one that starts afterwards does not see it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

import orjson

from app.kernel.errors import StateConflictError
from app.kernel.events import Event
from app.kernel.subjects import subject_token
from sensors.conditions import Condition

__all__ = ["Completion", "ConditionState", "Record", "StateLog"]

log = logging.getLogger("triggerfish.sensor")

FIRED_IDS_KEPT: Final = 1024
"""Fired event ids remembered per trigger (beyond the marker's), to refuse redeliveries."""

MARKER_WRITE_ATTEMPTS: Final = 20
"""Revision-checked marker writes lost to other replicas before giving up (then the
event is not acked and comes back)."""


class Record(Protocol):
    """One bucket record (``app.adapters.bus.StateRecord``)."""

    @property
    def revision(self) -> int: ...

    @property
    def key(self) -> str: ...

    @property
    def value(self) -> bytes | None: ...


class StateLog(Protocol):
    """A key-value bucket read as an ordered log (``app.adapters.bus.StateStore``)."""

    async def put(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, last: int) -> int: ...

    async def delete(self, key: str) -> None: ...

    async def next_record(self, after: int) -> Record | None: ...

    async def latest(self, key: str) -> Record | None: ...

    async def purge(self, key_filter: str, before: int | None = None) -> None: ...


def _key_part(name: str) -> str:
    """``name`` as one key token: itself when it is one, else the token plus a hash."""
    token = subject_token(name)
    if token == name:
        return name
    return f"{token}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _id_part(event_id: str) -> str:
    return hashlib.sha256(event_id.encode()).hexdigest()[:20]


def _event_time(ev: Event) -> datetime | None:
    try:
        when = datetime.fromisoformat(ev.time)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(slots=True)
class Entry:
    """The stored latest event of one dependency of one trigger."""

    revision: int
    key: str
    dep: str
    event: Event


@dataclass(slots=True)
class Completion:
    """A round: the events that satisfied a trigger's condition at ``revision``."""

    trigger: str
    revision: int
    entries: dict[str, Entry]

    @property
    def events(self) -> dict[str, Event]:
        return {d: e.event for d, e in self.entries.items()}

    def has(self, event_id: str) -> bool:
        return any(e.event.id == event_id for e in self.entries.values())


@dataclass(slots=True)
class _Trigger:
    name: str
    part: str
    condition: Condition
    live: dict[str, Entry] = field(default_factory=dict)
    cleared: int = 0
    """Every entry at or below this revision is consumed (marker ``upto``)."""
    done: dict[int, frozenset[int]] = field(default_factory=dict)
    """Rounds above ``cleared`` already fired: round revision → its entries' revisions
    (marker ``done``; a later round can be fired before an earlier one is)."""
    marker_revision: int = 0
    pending: list[Completion] = field(default_factory=list)
    fired: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def consumed(self, revision: int) -> bool:
        return revision <= self.cleared or any(revision in r for r in self.done.values())

    def remember(self, ids: Iterable[str]) -> None:
        for i in ids:
            self.fired[i] = None
            self.fired.move_to_end(i)
        while len(self.fired) > FIRED_IDS_KEPT:
            self.fired.popitem(last=False)


class ConditionState:
    """The condition state of one sensor's triggers (see the module docstring)."""

    def __init__(
        self, store: StateLog, conditions: Mapping[str, Condition], dependencies: Iterable[str]
    ) -> None:
        self._store = store
        self._triggers = {n: _Trigger(n, _key_part(n), c) for n, c in conditions.items()}
        self._by_part = {t.part: t for t in self._triggers.values()}
        self._deps = {_key_part(d): d for d in dependencies}
        self._dep_part = {d: p for p, d in self._deps.items()}
        self.revision = 0
        """The last bucket revision applied."""
        self._stale = True

    # -- queries --------------------------------------------------------------------------
    def present(self, trigger: str) -> list[str]:
        """The dependencies of ``trigger`` with a stored event, sorted."""
        return sorted(self._triggers[trigger].live)

    # -- start and takeover ---------------------------------------------------------------
    async def load(self) -> list[Completion]:
        """Read the whole bucket back and rebuild the state from it; returns the rounds
        found complete that no marker covers (to fire again: takeover)."""
        for t in self._triggers.values():
            t.live.clear()
            t.pending.clear()
            t.cleared = 0
            t.done.clear()
            t.marker_revision = 0
        self.revision = 0
        records = await self._read_all()
        if await self._migrate_legacy(records):
            records = await self._read_all()
        for rec in records:  # markers first: entries they cover are consumed
            self._apply_marker_record(rec)
        for rec in records:
            self._apply(rec)
        self.revision = records[-1].revision if records else 0
        self._stale = False
        pending = [c for t in self._triggers.values() for c in t.pending]
        if pending:
            log.info(
                "condition state: %d complete round(s) not marked fired (%s)",
                len(pending), ", ".join(f"{c.trigger}@{c.revision}" for c in pending),
            )  # fmt: skip
        return pending

    async def _read_all(self) -> list[Record]:
        out: list[Record] = []
        after = 0
        while (rec := await self._store.next_record(after)) is not None:
            out.append(rec)
            after = rec.revision
        return out

    async def _migrate_legacy(self, records: list[Record]) -> bool:
        """Keys ``<trigger>__<dep>`` (one event per dependency, an earlier layout) are
        rewritten as entries, in their order; deletion markers of them are purged."""
        moved = False
        for rec in records:
            trig, sep, dep = rec.key.partition("__")
            if not sep or "." in rec.key:
                continue
            t = self._by_part.get(trig)
            if rec.value is not None and t is not None and dep in self._deps:
                try:
                    ev = Event.from_json(rec.value)
                except ValueError:
                    ev = None
                if ev is not None:
                    await self._store.put(self._entry_key(t, self._deps[dep], ev.id), rec.value)
            await self._store.purge(rec.key)
            moved = True
        return moved

    # -- per event ------------------------------------------------------------------------
    async def add(self, triggers: list[str], dep: str, ev: Event) -> list[Completion]:
        """Store ``ev`` as the latest event of ``dep`` for each of ``triggers``; returns
        the rounds this replica must fire now (those ``ev`` completed, or one of a
        replica that stopped before marking it, when ``ev`` belongs to it)."""
        if self._stale:
            await self.load()
        try:
            return await self._add(triggers, dep, ev)
        except Exception:
            self._stale = True
            raise

    async def _add(self, triggers: list[str], dep: str, ev: Event) -> list[Completion]:
        fire: list[Completion] = []
        own: dict[int, tuple[_Trigger, str]] = {}
        payload = ev.to_json()
        for name in triggers:
            t = self._triggers[name]
            taken = next((c for c in t.pending if c.has(ev.id)), None)
            if taken is not None:  # its writer stopped before marking it: take it over
                log.info(
                    "trigger %s: event %s was redelivered and completes round %d, which"
                    " no replica marked fired; firing it here",
                    name, ev.id, taken.revision,
                )  # fmt: skip
                fire.append(taken)
                continue
            held = t.live.get(dep)
            if (held is not None and held.event.id == ev.id) or ev.id in t.fired:
                continue  # a redelivery of an event already stored or fired
            key = self._entry_key(t, dep, ev.id)
            own[await self._store.put(key, payload)] = (t, key)
        if own:
            fire += await self._catch_up(own, dep, ev)
        return fire

    def _entry_key(self, t: _Trigger, dep: str, event_id: str) -> str:
        return f"c.{t.part}.{self._dep_part[dep]}.{_id_part(event_id)}"

    async def _catch_up(
        self, own: dict[int, tuple[_Trigger, str]], dep: str, ev: Event
    ) -> list[Completion]:
        """Apply every record up to this replica's newest write, in order; return the
        rounds completed by its own writes."""
        until = max(own)
        if min(own) <= self.revision:  # the bucket was lost and restarted
            self._stale = True
            raise StateConflictError("state bucket revisions went back; reading it again")
        expected = set(range(self.revision + 1, until + 1))
        records: dict[int, Record] = {}
        if expected != set(own):  # someone else wrote in between: read what they wrote
            after = self.revision
            while after < until:
                rec = await self._store.next_record(after)
                if rec is None or rec.revision > until:
                    break
                records[rec.revision] = rec
                after = rec.revision
            if expected - set(own) - set(records):  # purged records: markers first
                for t in self._triggers.values():
                    marker = await self._store.latest(f"m.{t.part}")
                    if marker is not None:
                        self._apply_marker_record(marker)
        superseded: list[str] = []
        for rev in sorted(set(records) | set(own)):
            if rev in own:
                t, key = own[rev]
                prev = t.live.get(dep)
                self._apply_entry(t, rev, key, dep, ev)
                if (
                    prev is not None
                    and t.live.get(dep) is not prev
                    and not any(prev is e for c in t.pending for e in c.entries.values())
                ):
                    superseded.append(prev.key)  # replaced, not consumed by a round
            else:
                self._apply(records[rev])
        self.revision = until
        for key in superseded:
            await self._store.purge(key)
        mine = set(own)
        return [c for t in self._triggers.values() for c in t.pending if c.revision in mine]

    # -- applying records -----------------------------------------------------------------
    def _parse(self, key: str) -> tuple[_Trigger, str] | None:
        parts = key.split(".")
        if len(parts) == 4 and parts[0] == "c":
            t = self._by_part.get(parts[1])
            dep = self._deps.get(parts[2])
            if t is not None and dep is not None:
                return t, dep
        return None

    def _apply(self, rec: Record) -> None:
        if rec.key.startswith("m."):
            self._apply_marker_record(rec)
            return
        parsed = self._parse(rec.key)
        if parsed is None:
            return  # a trigger or dependency the sensor no longer has
        t, dep = parsed
        if rec.value is None:  # deleted (conditionsReset catch-up)
            held = t.live.get(dep)
            if held is not None and held.key == rec.key:
                del t.live[dep]
            return
        try:
            ev = Event.from_json(rec.value)
        except ValueError:
            return
        self._apply_entry(t, rec.revision, rec.key, dep, ev)

    def _apply_entry(self, t: _Trigger, revision: int, key: str, dep: str, ev: Event) -> None:
        if t.consumed(revision):
            return
        t.live[dep] = Entry(revision, key, dep, ev)
        if t.condition.satisfied(t.live.keys()):
            t.pending.append(Completion(t.name, revision, dict(t.live)))
            t.live.clear()

    def _apply_marker_record(self, rec: Record) -> None:
        if not rec.key.startswith("m.") or rec.value is None:
            return
        t = self._by_part.get(rec.key[2:])
        if t is None:
            return
        try:
            doc = orjson.loads(rec.value)
            upto = int(doc["upto"])
            done = {int(x): frozenset(int(r) for r in rs) for x, rs in doc["done"].items()}
            ids = [str(i) for i in doc["ids"].values()]
            reset = bool(doc.get("reset"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return
        t.marker_revision = max(t.marker_revision, rec.revision)
        self._mark(t, upto, done, ids, reset)

    def _mark(
        self,
        t: _Trigger,
        upto: int,
        done: Mapping[int, frozenset[int]],
        ids: list[str],
        reset: bool,
    ) -> None:
        t.remember(ids)
        t.cleared = max(t.cleared, upto)
        t.done.update(done)
        t.done = {x: rs for x, rs in t.done.items() if x > t.cleared}
        t.live = {d: e for d, e in t.live.items() if not t.consumed(e.revision)}
        t.pending = [
            c for c in t.pending if c.revision not in t.done and (reset or c.revision > t.cleared)
        ]

    # -- after firing ---------------------------------------------------------------------
    async def fired(self, c: Completion) -> None:
        """Round ``c`` was fired (or dead-lettered): mark it and purge its events."""
        t = self._triggers[c.trigger]
        try:
            await self._write_marker(t, c)
        except Exception:
            self._stale = True
            raise
        if c in t.pending:
            t.pending.remove(c)

    async def _write_marker(self, t: _Trigger, c: Completion | None) -> None:
        """Record round ``c`` as fired (``None``: a reset of everything read so far) in
        ``t``'s marker, with a revision check against other replicas; then purge."""
        key = f"m.{t.part}"
        for _ in range(MARKER_WRITE_ATTEMPTS):
            done = dict(t.done)
            if c is None:
                upto, ids = max(t.cleared, self.revision), {}
            else:
                done[c.revision] = frozenset(e.revision for e in c.entries.values())
                ids = {d: e.event.id for d, e in c.entries.items()}
                earlier = [
                    p for p in t.pending if p.revision < c.revision and p.revision not in done
                ]
                upto = t.cleared if earlier else max(t.cleared, c.revision)
            done = {x: rs for x, rs in done.items() if x > upto}
            doc: dict[str, object] = {
                "upto": upto,
                "done": {str(x): sorted(rs) for x, rs in done.items()},
                "ids": ids,
            }
            if c is None:
                doc["reset"] = True
            try:
                rev = await self._store.update(key, orjson.dumps(doc), t.marker_revision)
            except StateConflictError:
                latest = await self._store.latest(key)
                if latest is None:
                    t.marker_revision = 0
                else:
                    self._apply_marker_record(latest)
                    t.marker_revision = latest.revision
                continue
            t.marker_revision = rev
            if rev == self.revision + 1:
                self.revision = rev
            advanced = upto > t.cleared
            self._mark(t, upto, done, list(ids.values()), c is None)
            if advanced:
                await self._store.purge(f"c.{t.part}.>", before=upto + 1)
            if c is not None and c.revision > upto:
                for e in c.entries.values():
                    await self._store.purge(e.key)
            return
        raise StateConflictError(f"marker of trigger {t.name!r} kept changing")

    # -- conditionsReset ------------------------------------------------------------------
    async def reset(self, trigger: str, older_than: datetime | None = None) -> list[str]:
        """Forget ``trigger``'s stored events (all, or those whose event time is before
        ``older_than``); returns the dependencies cleared."""
        if self._stale:
            await self.load()
        t = self._triggers[trigger]
        try:
            if older_than is None:
                await self._read_to_end()
                cleared = sorted(t.live)
                await self._write_marker(t, None)
                return cleared
            old = [
                e
                for e in t.live.values()
                if (when := _event_time(e.event)) is not None and when < older_than
            ]
            for e in old:
                await self._store.delete(e.key)
                if t.live.get(e.dep) is e:
                    del t.live[e.dep]
            return sorted(e.dep for e in old)
        except Exception:
            self._stale = True
            raise

    async def _read_to_end(self) -> None:
        while (rec := await self._store.next_record(self.revision)) is not None:
            if rec.revision != self.revision + 1:  # a gap: markers first, as in a load
                await self.load()
                return
            self._apply(rec)
            self.revision = rec.revision
