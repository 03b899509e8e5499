"""The network, for every update model: the Hub's egress and one attempt to move bytes to a device.

`Egress` is the Hub's uplink in simulated time: the max-min fair sharing of `pvsim.fairshare`, plus
one pending SimPy event for the whole egress, at the moment the next transfer finishes. A start or
a stop changes every sharing transfer's pace, so that moment moves; the egress then schedules a new
event only if it came earlier (a later one is found when the earlier event fires and finds nothing
done), so each transfer costs O(1) events however many others run beside it. Every megabyte moved
is counted to the device it went to (`DeviceRun.mb_downloaded`) when its transfer ends or stops,
and into the per-step totals timeline.csv shows.

An attempt streams over the device's link and its share of the egress into the device's storage,
so the slowest of the three sets its pace. It stops at the next outage of the device's link or of
the Hub and fails when the request times out (PH_LIBEVENT_HTTP_TIMEOUT), or the connection drops
(the scenario's `network_loss_probability`) at a uniformly drawn byte. What a client does after a
failed attempt is its update model's business: Pantavisor's engine asks for the object again, an
A/B client resumes the stream after a retry delay.
"""

from __future__ import annotations

from collections.abc import Callable
from math import inf as INF
from typing import TYPE_CHECKING, Any

from pvsim.fairshare import ENDED, FairShare, Flow

if TYPE_CHECKING:
    from pvsim.device import DeviceRun
    from pvsim.kernel import CountingEnvironment

HTTP_TIMEOUT_S = 60.0  # a request to a Hub that stopped answering fails after this

# what an attempt tells its caller when it is over: (when the client hears it, completed?, MB moved)
Ended = Callable[[float, bool, float], None]


class Egress:
    """The Hub's shared uplink in simulated time (see the module docstring)."""

    __slots__ = ("env", "share", "wake_at", "call", "step", "until", "bins", "counted_to")

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

    @property
    def active(self) -> int:
        return self.share.active

    @property
    def mbps(self) -> float:
        egress = self.share.egress
        return 0.0 if egress == INF else egress

    @mbps.setter
    def mbps(self, mb_s: float) -> None:
        """A new capacity from now on (the sharded runner gives each shard its part per epoch)."""
        self._count(self.env._now)
        share = self.share
        share._clock(self.env._now)
        share.egress = mb_s if mb_s > 0 else INF
        share._rebalance()
        self._changed(force=True)

    # -- transfers -------------------------------------------------------------------------------
    def start(self, size: float, cap: float, owner: DeviceRun, on_end: Callable[[Flow], None], tag: Any) -> Flow:
        now = self.env._now
        self._count(now)
        flow = self.share.start(now, size, cap, owner, on_end, tag)
        self._changed()
        return flow

    def stop(self, flow: Flow) -> float:
        """Take a running transfer out (power cut, outage, the update is over); returns MB moved."""
        if flow.state == ENDED:
            return 0.0
        now = self.env._now
        self._count(now)
        moved = self.share.stop(flow, now)
        flow.owner.mb_downloaded += moved
        self._changed()
        return moved

    def settle(self) -> None:
        """The run is over: bytes of transfers still running count to their devices and the timeline."""
        now = self.env._now
        self._count(now)
        for flow in self.share.flows():
            flow.owner.mb_downloaded += self.share.moved(flow, now)

    def cumulative_mb(self, steps: int) -> list[float]:
        """Megabytes moved by the end of each of the first `steps` timeline steps."""
        total, out = 0.0, []
        for k in range(steps):
            total += self.bins[k] if k < len(self.bins) else 0.0
            out.append(round(total, 6))
        return out

    # -- the one pending event -------------------------------------------------------------------
    def _changed(self, force: bool = False) -> None:
        at = self.share.next_end()
        if at < self.wake_at or (force and at != self.wake_at):
            now = self.env._now
            self.wake_at = at
            self.call = self.env.call_later(at - now if at > now else 0.0, self._tick) if at < INF else None

    def _tick(self, call: Any) -> None:
        if call is not self.call:
            return  # superseded by an earlier one
        self.call = None
        self.wake_at = INF
        now = self.env._now
        self._count(now)
        done = self.share.advance(now)
        for flow in done:
            flow.owner.mb_downloaded += flow.size
        self._changed()
        for flow in done:
            flow.on_end(flow)  # type: ignore[misc]

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


def attempt(run: DeviceRun, mb: float, ended: Ended, written_mb: float | None = None) -> Flow:
    """One attempt, from now, to move `mb` megabytes, writing `written_mb` (default `mb`) to storage
    as they arrive. `ended(at, ok, moved_mb)` is called once: at completion, when the connection
    drops, or when an outage stopped it (then `at` is later: the request's timeout). The caller
    stops the returned flow (`world.egress.stop`) if it gives up first."""
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
    flow = world.egress.start(size, cap, run, _finished, (ended, dropped))
    stop = min(run.net_start if run.net_start > now else INF, world.hub_outages.next_start(now))
    if stop < world.until_s:
        env.call_later(stop - now, lambda _call: _outage(run, flow, stop))
    return flow


def _finished(flow: Flow) -> None:
    ended, dropped = flow.tag
    run = flow.owner
    if dropped:
        run.world.count("network_losses")
    ended(run.env._now, not dropped, flow.size)


def _outage(run: DeviceRun, flow: Flow, stop: float) -> None:
    """The link or the Hub went down under a running transfer: it stalls, the request times out."""
    if flow.state == ENDED:
        return
    world = run.world
    moved = world.egress.stop(flow)
    world.count("transfers_cut_by_outage")
    ended, _ = flow.tag
    ended(stop + HTTP_TIMEOUT_S, False, moved)
