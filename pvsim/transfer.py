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

# an attempt that the egress ended, or an outage stopped: (flow, the caller's tag, when the client
# hears it, completed?, MB moved)
Ended = Callable[[Flow, Any, float, bool, float], None]
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
        """A transfer from now. While it runs at its own cap it has a fixed end, `flow.end` with the
        token `flow.fixed` (then, if it changes, `on_fixed(flow, end, token)`): the owner calls
        `complete(flow, token)` at that time. `on_end(flow)` if it completes while sharing (the
        egress's own event found it done)."""
        share = self.share
        now = self.env._now
        if not share.sharing_n:  # self._sync(), inlined for the common case: nothing shares, nothing ends
            heap = share._capped_end
            if not heap or heap[0][0] > now + EPS_S:
                if now > self.counted_to:
                    self._count(now)
                flow = share.start(now, size, cap, owner, on_end, tag, on_fixed)
                if share.sharing_n or share.fixed:
                    self._after([])
                return flow
        done = self._sync()
        flow = share.start(now, size, cap, owner, on_end, tag, on_fixed)
        if done or share.sharing_n or share.fixed:
            self._after(done)
        return flow

    def complete(self, flow: Flow, token: int) -> bool:
        """The fixed end `token` of `flow` has come: unless it was superseded (False), the flow is
        done and the caller delivers it."""
        if flow.fixed != token:
            return False  # it was stopped, or the egress got contended and it shares now
        share = self.share
        heap = share._capped_end
        now = self.env._now
        if not share.sharing_n and heap and heap[0][3] is flow and heap[0][2] == token and heap[0][0] >= now - EPS_S:
            # the common case, uncontended: it is the next capped transfer to end, and it ends now
            if now > self.counted_to:
                self._count(now)
            heappop(heap)
            # share.finish(flow, now), inlined: nothing shares, so no rebalance; _leave of a capped flow
            share.now = now
            share.capped_n -= 1
            share.capped_sum = share.capped_sum - flow.cap if share.capped_n else 0.0
            flow.state = ENDED
            flow.epoch += 1
            flow.owner.mb_downloaded += flow.size
            flow.fixed = -1
            flow.on_end = flow.on_fixed = None
            return True
        done = self._sync()
        if flow.state != ENDED:  # float rounding: its end is a hair after now
            self.share.finish(flow, self.env._now)
            done.append(flow)
        flow.fixed = -1  # delivered by the caller, not by _after
        flow.on_end = flow.on_fixed = None
        self._after(done)
        return True

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
            for flow, end, token in fixed:
                if flow.state == CAPPED and flow.fixed == token and flow.on_fixed is not None:
                    flow.on_fixed(flow, end, token)
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
        self.counted_to = now
        share = self.share
        rate = share.egress if share.sharing_n else share.capped_sum  # share.rate, inlined (hot)
        if rate <= 0:
            return
        step, bins = self.step, self.bins
        k = int(last // step) + 1
        if now <= k * step and k < len(bins):  # the usual case: within one step
            bins[k] += rate * (now - last)
            return
        while last < now:
            k = int(last // step) + 1  # bin k ends at k * step
            edge = min(now, k * step)
            if k < len(bins):
                bins[k] += rate * (edge - last)
            last = edge


def _forget(flow: Flow) -> None:
    """Its end will not be delivered. Also drops the callbacks and the tag: they refer back to the
    flow (through the owner's agenda or closures), and the run keeps the cyclic collector off."""
    flow.fixed = -1
    flow.on_end = flow.on_fixed = flow.tag = None


def _deliver(flow: Flow) -> None:
    """Tell the owner that the egress ended it, once."""
    on_end = flow.on_end
    flow.fixed = -1
    flow.on_end = flow.on_fixed = None
    on_end(flow)  # type: ignore[misc]


def attempt(run: DeviceRun, mb: float, tag: Any, ended: Ended, fixed: Fixed, written_mb: float | None = None) -> Flow:
    """One attempt, from now, to move `mb` megabytes, writing `written_mb` (default `mb`) to storage
    as they arrive. The caller waits for the flow's fixed end if it has one (`flow.state` is
    CAPPED: `flow.end`, token `flow.fixed`), and for `fixed(flow, end, token)` if that changes;
    when `world.egress.complete(flow, token)` says it is done there, `outcome(flow)` tells how.
    `ended(flow, tag, at, ok, moved_mb)` is called instead if it ended while sharing the egress, or when
    an outage stopped it (then `at` is later: the request's timeout). The caller stops the flow
    (`world.egress.stop`) if it gives up first. `tag` is the caller's (`outcome` returns it)."""
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
    flow = world.egress.start(size, cap, run, _ended_sharing, fixed, (tag, dropped, ended))
    outages = world.hub_outages
    stop = min(run.net_start if run.net_start > now else INF, outages.next_start(now) if outages.starts else INF)
    if stop < world.until_s:
        env.call_later(stop - now, lambda _call: _outage(run, flow, stop))
    return flow


def outcome(flow: Flow) -> tuple[Any, bool]:
    """(the caller's tag, completed?) of a flow that ended: a dropped connection did not."""
    tag, dropped, _ = flow.tag
    flow.tag = None  # see _forget
    if dropped:
        flow.owner.world.count("network_losses")
    return tag, not dropped


def _ended_sharing(flow: Flow) -> None:
    ended = flow.tag[2]
    tag, ok = outcome(flow)
    ended(flow, tag, flow.owner.env._now, ok, flow.size)


def _outage(run: DeviceRun, flow: Flow, stop: float) -> None:
    """The link or the Hub went down under a running transfer: it stalls, the request times out."""
    world = run.world
    if flow.tag is None or not world.egress.running(flow):
        return  # it ended before (its end may not have been delivered yet), or was stopped
    tag, _, ended = flow.tag
    moved = world.egress.stop(flow)
    world.count("transfers_cut_by_outage")
    ended(flow, tag, stop + HTTP_TIMEOUT_S, False, moved)
