"""The network, for every update model: the Hub's egress and one attempt to move bytes to a device.

`Egress` is the Hub's uplink in simulated time: the max-min fair sharing of `pvsim.fairshare`. A
transfer capped by its own path (link, storage) has a fixed end time as long as the egress is not
contended; its owner waits for that time itself, as it would for any timer (`on_fixed`, then
`complete`), so an uncontended egress costs no events of its own. While some transfers share the
egress, their ends move with every start and stop: the egress then keeps one pending SimPy event,
at the next end, and schedules a new one only if that moment came earlier (a later one is found
when the earlier event fires and finds nothing done), so each transfer costs O(1) events however
many others run beside it. Every megabyte moved is counted to the device it went to
(`DeviceRun.mb_downloaded`) when its transfer ends or stops, and into the per-step totals
timeline.csv shows (the aggregate rate is integrated exactly between changes).

An attempt streams over the device's link and its share of the egress into the device's storage,
so the slowest of the three sets its pace. It stops at the next outage of the device's link or of
the Hub and fails when the request times out (PH_LIBEVENT_HTTP_TIMEOUT), or the connection drops
(the scenario's `network_loss_probability`) at a uniformly drawn byte. What a client does after a
failed attempt is its update model's business: Pantavisor's engine asks for the object again, an
A/B client resumes the stream after a retry delay.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop
from math import inf as INF
from typing import TYPE_CHECKING, Any

from pvsim.fairshare import CAPPED, ENDED, EPS_S, FairShare, Flow

if TYPE_CHECKING:
    from pvsim.device import DeviceRun
    from pvsim.kernel import CountingEnvironment

HTTP_TIMEOUT_S = 60.0  # a request to a Hub that stopped answering fails after this

# what an attempt tells its caller when it is over: (when the client hears it, completed?, MB moved)
Ended = Callable[[float, bool, float], None]
# a transfer got a fixed end (flow, end, token): the caller calls Egress.complete(flow, token) then
Fixed = Callable[[Flow, float, int], None]


class Egress:
    """The Hub's shared uplink in simulated time (see the module docstring)."""

    __slots__ = ("env", "share", "wake_at", "call", "step", "until", "bins", "counted_to", "in_tick")

    def __init__(self, env: CountingEnvironment, mb_s: float, step_s: float, until_s: float) -> None:
        self.env = env
        self.share = FairShare(mb_s)
        self.wake_at = INF
        self.call: Any = None  # the pending event; an event that is not this one is stale
        self.step = step_s
        self.until = until_s
        # megabytes moved in each timeline step (bin k: ((k-1) step, k step]), integrated exactly
        self.bins = [0.0] * (int(until_s // step_s) + 2)
        self.counted_to = 0.0
        self.in_tick = False  # completions are being delivered from the egress's own event

    @property
    def active(self) -> int:
        self._after(self._sync())
        return self.share.active

    @property
    def mbps(self) -> float:
        egress = self.share.egress
        return 0.0 if egress == INF else egress

    @mbps.setter
    def mbps(self, mb_s: float) -> None:
        """A new capacity from now on (the sharded runner gives each shard its part per epoch)."""
        done = self._sync()
        share = self.share
        share.egress = mb_s if mb_s > 0 else INF
        share._rebalance()
        self.wake_at = INF  # the pending event may now be too late
        self._after(done)

    # -- transfers -------------------------------------------------------------------------------
    def start(
        self, size: float, cap: float, owner: DeviceRun, on_end: Callable[[Flow], None],
        on_fixed: Callable[[Flow, float, int], None], tag: Any,
    ) -> Flow:  # fmt: skip
        """A transfer from now. `on_fixed(flow, end, token)` whenever it gets a fixed end (it runs
        at its own cap): the owner calls `complete(flow, token)` at `end`. `on_end(flow)` when it
        completes (from `complete`, or from the egress if it ended while sharing)."""
        done = self._sync()
        flow = self.share.start(self.env._now, size, cap, owner, on_end, tag, on_fixed)
        self._after(done)
        return flow

    def complete(self, flow: Flow, token: int) -> None:
        """The fixed end `token` of `flow` has come: unless it was superseded, the flow is done."""
        if flow.fixed != token:
            return  # it was stopped, or the egress got contended and it shares now
        share = self.share
        heap = share._capped_end
        now = self.env._now
        if not share.sharing_n and heap and heap[0][3] is flow and heap[0][2] == token and heap[0][0] >= now - EPS_S:
            # the common case, uncontended: it is the next capped transfer to end, and it ends now
            if now > self.counted_to:
                self._count(now)
            heappop(heap)
            share.finish(flow, now)
            flow.owner.mb_downloaded += flow.size
            _deliver(flow)
            return
        done = self._sync()
        if flow.state != ENDED:  # float rounding: its end is a hair after now
            self.share.finish(flow, self.env._now)
            done.append(flow)
        self._after(done)
        _deliver(flow)

    def running(self, flow: Flow) -> bool:
        self._after(self._sync())
        return flow.state != ENDED

    def stop(self, flow: Flow) -> float:
        """Take a transfer out (power cut, outage, the update is over): its end will not be
        delivered. Returns the megabytes it moved (all of them if it had in fact completed)."""
        done = self._sync()
        if flow.state == ENDED:
            moved = flow.size
        else:
            moved = self.share.stop(flow, self.env._now)
            flow.owner.mb_downloaded += moved
        _forget(flow)
        self._after(done)
        return moved

    def settle(self) -> None:
        """The run is over: bytes of transfers still running count to their devices and the timeline."""
        now = self.env._now
        for flow in self._sync():
            flow.owner.mb_downloaded += flow.size
        for flow in self.share.flows():
            flow.owner.mb_downloaded += self.share.moved(flow, now)

    def cumulative_mb(self, steps: int) -> list[float]:
        """Megabytes moved by the end of each of the first `steps` timeline steps."""
        total, out = 0.0, []
        for k in range(steps):
            total += self.bins[k] if k < len(self.bins) else 0.0
            out.append(round(total, 6))
        return out

    # -- keeping up with time --------------------------------------------------------------------
    def _sync(self) -> list[Flow]:
        """End what is done by now, in time order, integrating the rate exactly between ends."""
        share = self.share
        now = self.env._now
        if not share.sharing_n:
            heap = share._capped_end
            if not heap or heap[0][0] > now + EPS_S:  # nothing ends (a dead entry on top: the slow way)
                if now > self.counted_to:
                    self._count(now)
                share.now = now  # share._clock(now), inlined: nothing shares, V stays
                return []
        return share.advance(now, self._count)

    def _after(self, done: list[Flow]) -> None:
        """After a change: count the bytes of what ended, tell owners of new fixed ends, deliver
        the ends of transfers that were sharing, and keep one event pending while any is sharing
        (while none is, nothing's pace can change: owners wait for their fixed ends themselves)."""
        share = self.share
        if not done and not share.sharing_n and not share.fixed:
            return
        for flow in done:
            flow.owner.mb_downloaded += flow.size
        if share.sharing_n:
            at = share.next_end()
            if at < self.wake_at:
                now = self.env._now
                self.wake_at = at
                self.call = self.env.call_later(at - now if at > now else 0.0, self._tick)
        if share.fixed:
            fixed, share.fixed = share.fixed, []
            for flow, end in fixed:
                if flow.state == CAPPED and flow.fixed == flow.epoch:
                    flow.on_fixed(flow, end, flow.fixed)  # type: ignore[misc]
        for flow in done:
            if flow.fixed < 0 and flow.on_end is not None:
                _deliver(flow)  # ended while sharing: nobody else waits for it

    def _tick(self, call: Any) -> None:
        if call is not self.call:
            return  # superseded by an earlier one
        self.call = None
        self.wake_at = INF
        self.in_tick = True
        self._after(self._sync())
        self.in_tick = False

    def _count(self, now: float) -> None:
        """Add what moved since the last change to the timeline's bins (the rate was constant)."""
        last = self.counted_to
        if now <= last:
            return
        rate = self.share.rate
        self.counted_to = now
        if rate <= 0:
            return
        step, bins = self.step, self.bins
        while last < now:
            k = int(last // step) + 1  # bin k ends at k * step
            edge = min(now, k * step)
            if k < len(bins):
                bins[k] += rate * (edge - last)
            last = edge


def _deliver(flow: Flow) -> None:
    """Tell the owner, once (its `on_end` reads and drops the tag)."""
    on_end = flow.on_end
    flow.fixed = -1
    flow.on_end = flow.on_fixed = None
    on_end(flow)  # type: ignore[misc]


def _forget(flow: Flow) -> None:
    """Its end will not be delivered. Also drops the callbacks and the tag: they refer back to the
    flow (through the owner's agenda or closures), and the run keeps the cyclic collector off."""
    flow.fixed = -1
    flow.on_end = flow.on_fixed = flow.tag = None


def attempt(run: DeviceRun, mb: float, ended: Ended, fixed: Fixed, written_mb: float | None = None) -> Flow:
    """One attempt, from now, to move `mb` megabytes, writing `written_mb` (default `mb`) to storage
    as they arrive. `fixed(flow, end, token)` whenever the transfer gets a fixed end: the caller
    then calls `world.egress.complete(flow, token)` at `end`. `ended(at, ok, moved_mb)` is called
    once: at completion, when the connection drops, or when an outage stopped it (then `at` is
    later: the request's timeout). The caller stops the flow (`world.egress.stop`) if it gives up."""
    world = run.world
    env = world.env
    now = env._now
    written = mb if written_mb is None else written_mb
    cap = run.link_mb_s if written <= 0 else min(run.link_mb_s, run.write_mb_s * mb / written)
    p = world.faults.network_loss_probability
    size = mb
    dropped = p > 0 and world.rng.random() < p
    if dropped:
        size = mb * world.rng.random()  # the connection drops at a uniformly drawn byte
    flow = world.egress.start(size, cap, run, _finished, fixed, (ended, dropped))
    stop = min(run.net_start if run.net_start > now else INF, world.hub_outages.next_start(now))
    if stop < world.until_s:
        env.call_later(stop - now, lambda _call: _outage(run, flow, stop))
    return flow


def _finished(flow: Flow) -> None:
    ended, dropped = flow.tag
    flow.tag = None  # see _forget
    run = flow.owner
    if dropped:
        run.world.count("network_losses")
    ended(run.env._now, not dropped, flow.size)


def _outage(run: DeviceRun, flow: Flow, stop: float) -> None:
    """The link or the Hub went down under a running transfer: it stalls, the request times out."""
    world = run.world
    if flow.on_end is None or not world.egress.running(flow):
        return  # it ended before (its end may not have been delivered yet), or was stopped
    ended, _ = flow.tag
    flow.tag = None  # see _forget
    moved = world.egress.stop(flow)
    world.count("transfers_cut_by_outage")
    ended(stop + HTTP_TIMEOUT_S, False, moved)
