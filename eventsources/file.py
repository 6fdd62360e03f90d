"""File event source (``spec.file``): one event per change of a file in a watched directory.

Argo's ``FileEventSource``: ML pipelines start when new data lands in a directory (a
mounted volume, a shared disk). Argo uses fsnotify (inotify) or, with ``polling``, a
100 ms poller; here the well-kept ``watchfiles`` library (Rust ``notify``: inotify, or
polling) watches the directory, so no inotify handling is written by hand.

``watchfiles`` reports three kinds of change (added, modified, deleted); fsnotify has
five operations. :class:`OpClassifier` recovers them from a ``stat`` snapshot of the
directory: a deleted file whose inode reappears under another name in the same batch
was renamed (``RENAME``, then ``CREATE`` for the new name, as fsnotify reports it); a
modified file whose permission bits changed had a ``CHMOD``; one whose size or
modification time changed had a ``WRITE``; a new file that already holds data had a
``CREATE`` and a ``WRITE``. A file moved out of the directory is seen as ``REMOVE``
(its inode is not in the directory any more).

With ``polling`` the same snapshot is taken every 100 ms (as Argo's poller does) and
compared with the last one: watchfiles' own poller compares modification times to the
second and not permissions, so it would miss a second write within a second and every
``CHMOD``.

``watchfiles`` is imported only here (a forbidden contract in ``pyproject.toml``).
Registered as ``file`` in :mod:`eventsources.registry`.
"""

from __future__ import annotations

import asyncio
import enum
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from watchfiles import Change, awatch

from app.kernel.events import new_event_id
from app.kernel.spec import SpecModel
from app.languages.expr import compile_go_regex
from eventsources.brokers import BusBackoff, Deliverer, Outcome, PerEventSource, Retry
from eventsources.common import EventSourceFilter

#: Argo's poller looks every 100 ms.
POLL_DELAY_MS = 100
#: How long one wait of the watcher thread lasts before it reports "nothing" (the
#: source's readiness turns true with the first report, so keep it short).
WATCH_TIMEOUT_MS = 500
#: The quiet time after a change before a batch is reported, and the longest a batch
#: of continuous changes is held (watchfiles' ``step`` and ``debounce``).
STEP_MS = 50
DEBOUNCE_MS = 1_600


class Op(enum.IntFlag):
    """fsnotify's operations, with Argo's values (``fsevent.Op``: the ``op`` number)."""

    CREATE = 1
    WRITE = 2
    REMOVE = 4
    RENAME = 8
    CHMOD = 16


EVENT_TYPES = ("CREATE", "WRITE", "REMOVE", "RENAME", "CHMOD")


class WatchPathConfig(SpecModel):
    """Argo ``WatchPathConfig``: the directory, and the file in it (``path``) or a
    regular expression its relative path must match (``pathRegexp``, Go RE2, unanchored)."""

    directory: str
    path: str = ""
    path_regexp: str = ""

    @field_validator("directory")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v:
            raise ValueError("directory is required")
        if not v.startswith("/"):
            raise ValueError("directory must be an absolute file path")
        return v

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/"):
            raise ValueError("path must be a relative file path")
        return v

    @field_validator("path_regexp")
    @classmethod
    def _compiles(cls, v: str) -> str:
        if v:
            compile_go_regex(v)
        return v

    @model_validator(mode="after")
    def _one_of(self) -> WatchPathConfig:
        if not self.path and not self.path_regexp:
            raise ValueError("either path or pathRegexp must be specified")
        if self.path and self.path_regexp:
            raise ValueError("path and pathRegexp cannot be specified together")
        return self


class FileConfig(SpecModel):
    """One file event (Argo ``FileEventSource``)."""

    event_type: str = Field(description="CREATE, WRITE, REMOVE, RENAME or CHMOD")
    watch_path_config: WatchPathConfig
    polling: bool = Field(False, description="poll every 100 ms instead of inotify")
    metadata: dict[str, str] = Field(default_factory=dict)
    filter: EventSourceFilter | None = None

    @field_validator("event_type")
    @classmethod
    def _known_op(cls, v: str) -> str:
        if not v:
            raise ValueError("type must be specified")
        if v not in EVENT_TYPES:
            raise ValueError(f"must be one of {', '.join(EVENT_TYPES)}, got {v!r}")
        return v


@dataclass(frozen=True, slots=True)
class _Stat:
    """What the classifier remembers of one directory entry."""

    ino: tuple[int, int]
    mode: int
    mtime_ns: int
    size: int


def _stat(path: str) -> _Stat | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return _Stat((st.st_dev, st.st_ino), stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size)


class OpClassifier:
    """Turns watchfiles' batches into fsnotify operations, from a ``stat`` snapshot."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.known: dict[str, _Stat] = {}

    def scan(self) -> None:
        """Remember every entry of the directory as it is now."""
        self.known = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                st = _stat(entry.path)
                if st is not None:
                    self.known[entry.name] = st

    def poll(self) -> set[tuple[Change, str]]:
        """The changes since the last snapshot, found by reading the directory again
        (``known`` is left for :meth:`classify` to update)."""
        now: dict[str, _Stat] = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                st = _stat(entry.path)
                if st is not None:
                    now[entry.name] = st
        changes: set[tuple[Change, str]] = set()
        for name in self.known.keys() - now.keys():
            changes.add((Change.deleted, os.path.join(self.directory, name)))
        for name, st in now.items():
            old = self.known.get(name)
            if old is None or old.ino != st.ino:
                changes.add((Change.added, os.path.join(self.directory, name)))
                if old is not None:
                    changes.add((Change.deleted, os.path.join(self.directory, name)))
            elif old != st:
                changes.add((Change.modified, os.path.join(self.directory, name)))
        return changes

    def classify(self, changes: Iterable[tuple[Change, str]]) -> Iterator[tuple[str, Op]]:
        """``(file name, op)`` for one batch, in an order fsnotify could have reported."""
        kinds: dict[str, set[Change]] = {}
        for change, path in changes:
            parent, name = os.path.split(path)
            if name and os.path.normpath(parent) == self.directory:
                kinds.setdefault(name, set()).add(change)
        now = {name: _stat(os.path.join(self.directory, name)) for name in kinds}
        new_inodes = {st.ino for name, st in now.items() if st is not None}
        old_inodes = {st.ino for st in self.known.values()}
        # Disappearances first when the name exists again (removed, then made anew).
        for name in sorted(kinds):
            seen, old, new = kinds[name], self.known.get(name), now[name]
            gone = Change.deleted in seen and old is not None
            came = new is not None and (Change.added in seen or old is None)
            if gone and old is not None and (new is None or new.ino != old.ino):
                yield name, Op.RENAME if old.ino in new_inodes else Op.REMOVE
            elif new is None and old is not None:
                yield name, Op.REMOVE
            if new is None:
                self.known.pop(name, None)
                continue
            if came and (old is None or old.ino != new.ino):
                yield name, Op.CREATE
                if new.size > 0 and new.ino not in old_inodes:
                    yield name, Op.WRITE
            elif old is not None:
                if new.mode != old.mode:
                    yield name, Op.CHMOD
                if (new.size, new.mtime_ns) != (old.size, old.mtime_ns):
                    yield name, Op.WRITE
                elif new.mode == old.mode:
                    yield name, Op.CHMOD  # only the inode changed (owner, times, xattrs)
            self.known[name] = new


class _Watch:
    """One event name: a watcher on its directory, made again when it fails."""

    def __init__(self, plugin: FileSource, event_name: str, cfg: FileConfig) -> None:
        self.plugin = plugin
        self.log = plugin.ctx.log
        self.cfg = cfg
        self.deliver = Deliverer(plugin, event_name, cfg.filter.expression if cfg.filter else None)
        self.where = self.deliver.where
        wpc = cfg.watch_path_config
        self.directory = os.path.normpath(wpc.directory)
        self.regexp: re.Pattern[str] | None = (
            compile_go_regex(wpc.path_regexp) if wpc.path_regexp else None
        )
        self.op = Op[cfg.event_type]
        self.live = False

    def matches(self, name: str) -> bool:
        """Argo's test of the path relative to the directory (``path`` equal, or
        ``pathRegexp`` found in it)."""
        if self.cfg.watch_path_config.path:
            return os.path.normpath(self.cfg.watch_path_config.path) == name
        return self.regexp is not None and self.regexp.search(name) is not None

    async def run(self) -> None:
        retry = Retry(None)
        while True:
            try:
                await self._watch(retry)
            except OSError as e:
                self.log.error("%s: cannot watch %s (%s); retrying", self.where, self.directory, e)
            except RuntimeError as e:  # watchfiles reports a failed watcher this way
                self.log.error(
                    "%s: watcher on %s failed (%s); retrying", self.where, self.directory, e
                )
            finally:
                self.live = False
            await retry.wait()

    def _started(self, retry: Retry) -> None:
        if not self.live:
            self.live = True
            retry.reset()
            self.log.info(
                "%s: watching %s for %s (%s)",
                self.where,
                self.directory,
                self.cfg.event_type,
                "polling" if self.cfg.polling else "inotify",
            )

    async def _watch(self, retry: Retry) -> None:
        classifier = OpClassifier(self.directory)
        classifier.scan()  # raises when the directory is not there (yet)
        if self.cfg.polling:
            await self._poll(classifier, retry)
            return
        async for changes in awatch(
            self.directory,
            watch_filter=None,
            recursive=False,
            force_polling=self.cfg.polling,
            poll_delay_ms=POLL_DELAY_MS,
            rust_timeout=WATCH_TIMEOUT_MS,
            yield_on_timeout=True,
            step=STEP_MS,
            debounce=DEBOUNCE_MS,
        ):
            self._started(retry)
            await self._changed(classifier, changes)
        raise RuntimeError("the watcher stopped")

    async def _poll(self, classifier: OpClassifier, retry: Retry) -> None:
        self._started(retry)
        while True:
            await asyncio.sleep(POLL_DELAY_MS / 1000)
            await self._changed(classifier, await asyncio.to_thread(classifier.poll))

    async def _changed(self, classifier: OpClassifier, changes: set[tuple[Change, str]]) -> None:
        for name, op in classifier.classify(changes):
            if op is self.op and self.matches(name):
                await self._publish(os.path.join(self.directory, name), op)

    async def _publish(self, path: str, op: Op) -> None:
        """Publish one change; while the bus refuses it, hold it and try again (file
        changes have no upstream that would deliver them again)."""
        data: dict[str, Any] = {"name": path, "op": int(op), "metadata": dict(self.cfg.metadata)}
        what = f"{op.name} {path}"
        event_id = new_event_id()
        backoff = BusBackoff()
        while (outcome := await self.deliver.deliver(data, event_id, what)) is Outcome.FAILED:
            self.log.warning(
                "%s: %s not stored (%s); holding it and retrying",
                self.where,
                what,
                self.deliver.last_error,
            )
            await backoff.wait()
        if outcome is Outcome.SENT:
            self.log.info("%s: %s published as event %s", self.where, what, event_id)


class FileSource(PerEventSource[FileConfig]):
    """Changes of files in a directory as events: ``spec.file.<eventName>``.

    Fields (Argo's ``FileEventSource``): ``eventType`` (``CREATE``, ``WRITE``,
    ``REMOVE``, ``RENAME`` or ``CHMOD``: the one operation that makes an event),
    ``watchPathConfig`` (``directory``, absolute; ``path``, a file name relative to it,
    or ``pathRegexp``, a Go regular expression searched in that relative name), ``polling``
    (read the directory every 100 ms instead of inotify, for file systems without
    notifications),
    ``metadata``, ``filter.expression``. Only the directory itself is watched, not its
    subdirectories (as fsnotify does).

    Event data (Argo's ``fsevent.Event``): ``{"name": "<directory>/<file>", "op": N,
    "metadata": {...}}`` with ``op`` fsnotify's number (1 CREATE, 2 WRITE, 4 REMOVE,
    8 RENAME, 16 CHMOD).

    Delivery: a file system has no acknowledgement. A change the bus refuses is held in
    memory and published again (with the same event id) until the bus takes it, while
    later changes wait in the watcher; a change that happens while the process is not
    running is not seen (as in Argo). A directory that does not exist (yet) or a watcher
    that fails is retried with a bounded back-off; the event is ready once its watcher
    runs.
    """

    type_name: ClassVar[str] = "file"
    config_model: ClassVar[type[SpecModel]] = FileConfig

    def worker(self, event_name: str, cfg: FileConfig) -> _Watch:
        return _Watch(self, event_name, cfg)
