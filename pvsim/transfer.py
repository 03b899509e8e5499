"""The network, for every update model: one attempt to move bytes from the Hub to a device.

An attempt streams over the device's link and its share of the Hub's egress into the device's
storage, so the slower of the two sets its pace. It stalls at the next outage of the device's
link or of the Hub and fails when the request times out (PH_LIBEVENT_HTTP_TIMEOUT), or the
connection drops (the scenario's `network_loss_probability`) at a uniformly drawn point. What a
client does after a failed attempt is its update model's business: Pantavisor's engine asks for
the object again, an A/B client resumes the stream after a retry delay.
"""

from __future__ import annotations

from math import inf as INF
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pvsim.device import DeviceRun

HTTP_TIMEOUT_S = 60.0  # a request to a Hub that stopped answering fails after this


# (end, moved_mb, ok, rate_mb_s): when it ends (complete, dropped, or timed out after a stall),
# the megabytes moved by then, whether it completed, its share of the link and the egress.
# A plain tuple: Pantavisor's model makes one per object transfer, on its hot path.
Attempt = tuple[float, float, bool, float]


def attempt(run: DeviceRun, start: float, mb: float, written_mb: float | None = None) -> Attempt:
    """One attempt from `start` to move `mb` megabytes, writing `written_mb` (default `mb`) to
    storage as they arrive. The attempt joins the Hub's egress; the caller takes it out when it
    ends (`world.egress.active -= 1`)."""
    world = run.world
    egress = world.egress
    rate = egress.share(run.link_mb_s)
    egress.active += 1
    written = mb if written_mb is None else written_mb
    end = start + max(mb / rate, written / run.write_mb_s)
    stop = min(run.net_start if run.net_start > start else INF, world.hub_outages.next_start(start))
    p = world.faults.network_loss_probability
    if end > stop:
        world.count("transfers_cut_by_outage")
        # the connection stalls at the outage and fails when the request times out
        return stop + HTTP_TIMEOUT_S, (stop - start) * rate, False, rate
    if p > 0 and world.rng.random() < p:
        world.count("network_losses")
        drop = start + (end - start) * world.rng.random()
        return drop, (drop - start) * rate, False, rate
    return end, mb, True, rate
