"""Leader election on a ``coordination.k8s.io/v1`` Lease, for anything that must run once.

Several replicas of the controller (and, later, of a source that must be a singleton,
such as a calendar) share one Lease object; whoever holds it does the work, the others
stand by. The protocol is client-go's ``leaderelection`` with a ``LeaseLock``, so
Triggerfish replicas and their tooling read the same fields (``holderIdentity``,
``leaseDurationSeconds``, ``acquireTime``, ``renewTime``, ``leaseTransitions``):

* every write is an optimistic update carrying the ``resourceVersion`` last read, so
  two candidates can never both win the same round (the loser gets 409 Conflict);
* a candidate may take a Lease held by someone else only after it has seen the
  record unchanged for ``lease_duration_seconds`` on its *own* clock (no trust in the
  holder's timestamps, so clock skew between nodes does not matter);
* the holder renews every ``retry_period_seconds`` and gives up (clears
  :attr:`LeaderLease.is_leader`, sets :attr:`LeaderLease.lost`) when it could not
  renew for ``renew_deadline_seconds``, which is shorter than the lease duration: it
  stops working before anyone else may start;
* :meth:`LeaderLease.release` on a clean stop empties ``holderIdentity`` so a standby
  takes over at its next retry instead of waiting out the lease.

It talks to the API through any object with ``get``/``create``/``update`` of plain
dicts (:class:`app.adapters.kube.ApiKube` is one), and knows nothing of what the
leader does: :meth:`LeaderLease.lead` runs a coroutine while the lease is held.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from app.kernel.errors import ConfigError, TriggerfishError

log = logging.getLogger("triggerfish.lease")

API_VERSION = "coordination.k8s.io/v1"
JITTER = 1.2
"""client-go's JitterFactor: retries wait ``retry_period * (1 + random() * 0.2)``."""


class LeaseApi(Protocol):
    """What the election needs from a Kubernetes client (``ApiKube`` satisfies it)."""

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str
    ) -> dict[str, Any] | None: ...

    async def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]: ...

    async def update(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period."""

    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.lease_duration_seconds <= self.renew_deadline_seconds:
            raise ConfigError("lease duration must be greater than the renew deadline")
        if self.renew_deadline_seconds <= JITTER * self.retry_period_seconds:
            raise ConfigError("renew deadline must be greater than 1.2 x the retry period")
        if self.retry_period_seconds <= 0:
            raise ConfigError("retry period must be positive")


def _micro_time(t: float) -> str:
    """A Kubernetes ``MicroTime`` (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(value: str) -> float:
    """Seconds since the epoch of a ``MicroTime`` or ``Time`` string."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class LeaderLease:
    """One candidate for one Lease: :meth:`acquire`, :meth:`renew`, :meth:`release`,
    :attr:`is_leader`; or all of it around a piece of work with :meth:`lead`."""

    def __init__(
        self,
        api: LeaseApi,
        name: str,
        namespace: str,
        identity: str,
        timing: LeaseTiming | None = None,
    ) -> None:
        if not name or not namespace or not identity:
            raise ConfigError("a lease needs a name, a namespace and an identity")
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.is_leader = asyncio.Event()
        """Set while this candidate holds the lease (as far as it knows)."""
        self.lost = asyncio.Event()
        """Set when a held lease could not be renewed within the renew deadline."""
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._other_holder = ""

    # -- one round --------------------------------------------------------------------
    async def try_acquire_or_renew(self) -> bool:
        """One attempt (client-go's ``tryAcquireOrRenew``): True when we hold the lease
        afterwards. API errors count as a failed attempt, never raise."""
        try:
            return await self._attempt()
        except TriggerfishError as e:
            log.debug("lease %s/%s: attempt failed: %s", self.namespace, self.name, e)
            return False

    async def _attempt(self) -> bool:
        now = time.time()
        self._other_holder = ""
        lease = await self.api.get(API_VERSION, "Lease", self.name, self.namespace)
        if lease is None:
            spec = self._spec(now, acquire_time=now, transitions=0)
            body = {
                "apiVersion": API_VERSION,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": spec,
            }
            created = await self.api.create(body, self.namespace)
            self._observe(created.get("spec") or spec)
            return self._won()
        spec = dict(lease.get("spec") or {})
        if spec != self._observed_spec:
            self._observe(spec)
        holder = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_duration_seconds)
        if holder and holder != self.identity and self._observed_at + duration > time.monotonic():
            self._other_holder = holder
            return False  # someone else holds it and it has not expired by our clock
        self._other_holder = ""
        if holder == self.identity:
            acquire = spec.get("acquireTime") or _micro_time(now)
            transitions = int(spec.get("leaseTransitions") or 0)
            new_spec = self._spec(now, acquire_time=None, transitions=transitions)
            new_spec["acquireTime"] = acquire
        else:
            transitions = int(spec.get("leaseTransitions") or 0) + 1
            new_spec = self._spec(now, acquire_time=now, transitions=transitions)
        update = {
            "apiVersion": API_VERSION,
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease["metadata"]["resourceVersion"],
            },
            "spec": new_spec,
        }
        updated = await self.api.update(update, self.namespace)
        self._observe(updated.get("spec") or new_spec)
        return self._won()

    def _spec(self, now: float, *, acquire_time: float | None, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration_seconds)),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }
        if acquire_time is not None:
            spec["acquireTime"] = _micro_time(acquire_time)
        return spec

    def _observe(self, spec: dict[str, Any]) -> None:
        self._observed_spec = dict(spec)
        self._observed_at = time.monotonic()

    def _won(self) -> bool:
        self._renewed_at = time.monotonic()
        if not self.is_leader.is_set():
            log.info("lease %s/%s acquired by %s", self.namespace, self.name, self.identity)
        self.lost.clear()
        self.is_leader.set()
        return True

    def _sleep_time(self) -> float:
        return self.timing.retry_period_seconds * (1 + random.random() * (JITTER - 1))

    # -- the verbs --------------------------------------------------------------------
    async def acquire(self) -> None:
        """Return once this candidate holds the lease (tries every retry period)."""
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self._sleep_time())

    async def renew(self) -> bool:
        """One renewal; False (and :attr:`lost` set) once the renew deadline passed
        without a successful renewal, or at once when someone else holds the lease.
        Call it every retry period while leading."""
        if await self.try_acquire_or_renew():
            return True
        overdue = time.monotonic() - self._renewed_at >= self.timing.renew_deadline_seconds
        if overdue or self._other_holder:
            self._lose("held by " + self._other_holder if self._other_holder else "not renewed")
            return False
        return True

    def _lose(self, why: str) -> None:
        if self.is_leader.is_set():
            log.warning("lease %s/%s lost by %s (%s)", self.namespace, self.name,
                        self.identity, why)  # fmt: skip
        self.is_leader.clear()
        self.lost.set()

    async def keep(self) -> None:
        """Renew every retry period until the lease is lost (then return)."""
        while True:
            await asyncio.sleep(self._sleep_time())
            deadline = self._renewed_at + self.timing.renew_deadline_seconds
            try:  # a hung API call must not outlive the renew deadline (asyncio.timeout:
                # 3.11's wait_for can swallow a cancellation arriving as renew() ends)
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    ok = await self.renew()
            except TimeoutError:
                self._lose("renewal timed out")
                ok = False
            if not ok:
                return

    async def release(self) -> None:
        """Give the lease up now (empty holder) if we hold it; errors are logged only."""
        if not self.is_leader.is_set():
            return
        self.is_leader.clear()
        try:
            lease = await self.api.get(API_VERSION, "Lease", self.name, self.namespace)
            if lease is None:
                return
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            now = time.time()
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time(now))
            spec["acquireTime"] = _micro_time(now)
            body = {
                "apiVersion": API_VERSION,
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "resourceVersion": lease["metadata"]["resourceVersion"],
                },
                "spec": spec,
            }
            await self.api.update(body, self.namespace)
            log.info("lease %s/%s released by %s", self.namespace, self.name, self.identity)
        except TriggerfishError as e:
            log.warning("lease %s/%s: release failed: %s", self.namespace, self.name, e)

    # -- around some work -------------------------------------------------------------
    async def lead(self, work: Callable[[], Awaitable[None]]) -> None:
        """Forever: wait for the lease, run ``work()`` while it is held, cancel it when
        the lease is lost and stand by again. Returns (or raises) when ``work`` does; on
        cancellation the work is cancelled and the lease released."""
        while True:
            await self.acquire()
            task = asyncio.ensure_future(work())
            keeper = asyncio.create_task(self.keep())
            try:
                await asyncio.wait({task, keeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (keeper, task):
                    t.cancel()
                await asyncio.gather(keeper, task, return_exceptions=True)
                await asyncio.shield(self.release())
            if not task.cancelled():
                task.result()  # work finished or failed: propagate
                return
            log.info("lease %s/%s: %s standing by", self.namespace, self.name, self.identity)
