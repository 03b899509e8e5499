"""Max-min fair sharing of the Hub's egress among the transfers running through it.

Every active transfer (a `Flow`) has a cap: the most its own path can carry (the device's link, and
how fast its storage takes the bytes). The egress `E` is shared max-min fairly: the fair share `f`
solves sum(min(cap_i, f)) = E, a transfer whose cap is below `f` runs at its cap ("capped"), every
other one at `f` ("sharing"). With no egress limit (`E` <= 0) every transfer is capped.

Nothing is rescanned when a transfer starts or ends (water-filling with heaps):

- Capped transfers run at a fixed rate, so each finishes at a fixed real time: a heap of those.
- Sharing transfers all advance at the same rate `f`, so they are kept in *virtual time* `V`, the
  bytes one sharing transfer has moved since the start: `V` advances at `f`, and a sharing transfer
  of `r` remaining bytes joined at `V0` finishes when `V` reaches `V0 + r`, whatever `f` does in
  between. A heap of those finishing virtual times.
- A change of `f` moves only the transfers whose cap it crosses between the two groups: the
  capped ones with the largest caps (a max-heap by cap) when `f` falls, the sharing ones with the
  smallest caps (a min-heap) when it rises. Each move is O(log n).

Heap entries are deleted lazily (a flow's `epoch` says which entries are current) and a heap is
rebuilt when dead entries outnumber live ones, so each change costs O(log n) amortised. The
structure is pure (no SimPy): the caller says what time it is, asks when the next transfer
finishes (`next_end`), and is told which transfers got a fixed end time (`fixed`): those finish
then unless the egress becomes contended, so their owners can wait for that time themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Any

INF = float("inf")
EPS_MB = 1e-6  # a transfer this close to done is done (float rounding of virtual time)
EPS_S = 1e-6  # likewise for a capped transfer's end time
CAPPED, SHARING, ENDED = 0, 1, 2


class Flow:
    """One transfer through the egress."""

    __slots__ = ("size", "cap", "state", "epoch", "fixed", "end", "t0", "left0", "vend", "owner", "on_end", "on_fixed", "tag")

    def __init__(
        self, size: float, cap: float, owner: Any, on_end: Callable[[Flow], None] | None, tag: Any,
        on_fixed: Callable[[Flow, float, int], None] | None = None,
    ) -> None:  # fmt: skip
        self.size = size  # megabytes to move
        self.cap = cap  # megabytes per second its own path allows
        self.state = CAPPED
        self.epoch = 0  # bumped when it changes group: heap entries of older epochs are dead
        # while capped (and after it completed as capped): the epoch its fixed end time belongs to;
        # -1 while sharing or once stopped. Whoever waits for the fixed end checks this token.
        self.fixed = -1
        self.end = INF  # while capped: when it ends
        self.t0 = 0.0  # capped: when it entered the group, with `left0` megabytes to go
        self.left0 = size
        self.vend = 0.0  # sharing: the virtual time at which it is done
        self.owner = owner  # whom its bytes are counted to (pvsim.transfer)
        self.on_end = on_end  # called when it has moved `size` (not when stopped)
        self.on_fixed = on_fixed  # told (flow, end, token) whenever it gets a fixed end time
        self.tag = tag  # the caller's own data


class FairShare:
    """The egress: `start`, `stop`, `advance` (ending what is done) and `next_end`."""

    def __init__(self, egress_mb_s: float) -> None:
        self.egress = egress_mb_s if egress_mb_s > 0 else INF
        self.now = 0.0
        self.v = 0.0  # virtual time: what each sharing flow has moved since V was 0
        self.fair = INF  # the fair share f; INF while every flow is capped
        self.capped_sum = 0.0  # summed caps of the capped flows
        self.capped_n = 0
        self.sharing_n = 0
        self.fixed: list[tuple[Flow, float, int]] = []  # (flow, end, token): fixed ends announced since last taken
        self._seq = count()
        self._changes = 0  # dead heap entries are swept every 1024 starts (_compact)
        self._capped_end: list[tuple[float, int, int, Flow]] = []  # (real end, seq, epoch, flow)
        self._capped_cap: list[tuple[float, int, int, Flow]] = []  # (-cap, ...): largest cap first
        # _capped_cap is only kept while the egress is contended: uncontended, no flow ever moves
        # between the groups, so a transfer would pay a heap push for nothing. It is rebuilt from
        # _capped_end when contention starts (rare: a handful of times in a run).
        self._cap_kept = False
        self._sharing_end: list[tuple[float, int, int, Flow]] = []  # (virtual end, ...)
        self._sharing_cap: list[tuple[float, int, int, Flow]] = []  # (cap, ...): smallest cap first

    # -- the aggregate -------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return self.capped_n + self.sharing_n

    @property
    def rate(self) -> float:
        """MB/s moving through the egress now."""
        if self.sharing_n:
            return self.egress
        return self.capped_sum

    # -- time --------------------------------------------------------------------------------------------
    def _clock(self, now: float) -> None:
        if now > self.now:
            if self.sharing_n:
                self.v += self.fair * (now - self.now)
            self.now = now

    def left(self, flow: Flow) -> float:
        """Megabytes `flow` still has to move at the current time."""
        if flow.state == CAPPED:
            return max(0.0, flow.left0 - flow.cap * (self.now - flow.t0))
        if flow.state == SHARING:
            return max(0.0, flow.vend - self.v)
        return 0.0

    def flows(self) -> list[Flow]:
        """The running flows, in a deterministic order (when they joined their group)."""
        live = [e for e in self._capped_end + self._sharing_end if e[3].epoch == e[2] and e[3].state != ENDED]
        return [e[3] for e in sorted(live, key=lambda e: e[1])]

    def moved(self, flow: Flow, now: float) -> float:
        self._clock(now)
        return flow.size - self.left(flow)

    # -- changes ---------------------------------------------------------------------------------------
    def start(
        self, now: float, size: float, cap: float, owner: Any = None, on_end: Callable[[Flow], None] | None = None,
        tag: Any = None, on_fixed: Callable[[Flow, float, int], None] | None = None,
    ) -> Flow:  # fmt: skip
        if self.sharing_n:
            self._clock(now)
        else:
            self.now = now  # V only moves while some flow shares
        flow = Flow(size, cap, owner, on_end, tag, on_fixed)
        # _to_capped(flow, size), inlined (hot); not announced: the caller reads flow.end itself
        flow.state = CAPPED
        flow.epoch = flow.fixed = 1
        flow.t0 = now
        flow.end = end = now + size / cap
        seq = next(self._seq)
        heappush(self._capped_end, (end, seq, 1, flow))
        if self._cap_kept:
            heappush(self._capped_cap, (-cap, seq, 1, flow))
        self.capped_sum += cap
        self.capped_n += 1
        if self.sharing_n or self.capped_sum > self.egress:
            self._rebalance()
        self._changes += 1
        if self._changes & 1023 == 0:
            self._compact()
        return flow

    def stop(self, flow: Flow, now: float) -> float:
        """Take `flow` out before it is done; returns the megabytes it moved."""
        self._clock(now)
        if flow.state == ENDED:
            return flow.size
        moved = flow.size - self.left(flow)
        self._leave(flow)
        self._rebalance()
        return moved

    def finish(self, flow: Flow, now: float) -> None:
        """End a capped flow at its fixed end (called a hair early when float rounding says so)."""
        self._clock(now)
        if flow.state != ENDED:
            self._leave(flow, completed=True)
            self._rebalance()

    def advance(self, now: float, count: Callable[[float], None] | None = None) -> list[Flow]:
        """Move the clock to `now`, ending the flows done by then in time order (each end changes
        the others' pace, so they are replayed one by one). `count(t)` is called before each change
        and at `now`, so a caller can integrate the aggregate rate exactly."""
        done: list[Flow] = []
        capped, sharing = self._capped_end, self._sharing_end
        while True:
            while capped and capped[0][3].epoch != capped[0][2]:
                heappop(capped)
            while sharing and sharing[0][3].epoch != sharing[0][2]:
                heappop(sharing)
            t = capped[0][0] if capped else INF
            if sharing and self.sharing_n:
                t = min(t, self.now + max(0.0, sharing[0][0] - self.v) / self.fair)
            if t > now + EPS_S:
                break
            t = max(t, self.now)
            if count is not None:
                count(t)
            if t > self.now:  # self._clock(t), inlined (hot)
                if self.sharing_n:
                    self.v += self.fair * (t - self.now)
                self.now = t
            ended = False
            while capped and capped[0][0] <= t + EPS_S:
                _, _, epoch, flow = heappop(capped)
                if flow.epoch == epoch and flow.state == CAPPED:
                    done.append(flow)
                    self._leave(flow, completed=True)
                    ended = True
            while sharing and sharing[0][0] <= self.v + EPS_MB:
                _, _, epoch, flow = heappop(sharing)
                if flow.epoch == epoch and flow.state == SHARING:
                    done.append(flow)
                    self._leave(flow, completed=True)
                    ended = True
            if not ended:
                break  # float rounding: what is left ends at the next call
            self._rebalance()
        if count is not None:
            count(now)
        self._clock(now)
        return done

    def next_end(self) -> float:
        """When the next flow finishes if nothing else changes (INF: none running)."""
        best = INF
        heap = self._capped_end
        while heap and heap[0][3].epoch != heap[0][2]:
            heappop(heap)
        if heap:
            best = heap[0][0]
        heap = self._sharing_end
        while heap and heap[0][3].epoch != heap[0][2]:
            heappop(heap)
        if heap and self.sharing_n:
            best = min(best, self.now + max(0.0, heap[0][0] - self.v) / self.fair)
        return best

    # -- the two groups ------------------------------------------------------------------------------
    def _to_capped(self, flow: Flow, left: float, announce: bool = True) -> None:
        flow.state = CAPPED
        flow.epoch += 1
        flow.t0 = self.now
        flow.left0 = left
        flow.fixed = flow.epoch
        seq = next(self._seq)
        flow.end = end = self.now + left / flow.cap
        if announce:
            self.fixed.append((flow, end, flow.epoch))
        heappush(self._capped_end, (end, seq, flow.epoch, flow))
        if self._cap_kept:
            heappush(self._capped_cap, (-flow.cap, seq, flow.epoch, flow))
        self.capped_sum += flow.cap
        self.capped_n += 1

    def _to_sharing(self, flow: Flow, left: float) -> None:
        flow.state = SHARING
        flow.epoch += 1
        flow.vend = self.v + left
        seq = next(self._seq)
        heappush(self._sharing_end, (flow.vend, seq, flow.epoch, flow))
        heappush(self._sharing_cap, (flow.cap, seq, flow.epoch, flow))
        self.sharing_n += 1

    def _leave(self, flow: Flow, completed: bool = False) -> None:
        if not completed:
            flow.fixed = -1  # its fixed end, if it had one, will not come
        if flow.state == CAPPED:
            self.capped_sum -= flow.cap
            self.capped_n -= 1
            if not self.capped_n:
                self.capped_sum = 0.0  # no float residue left behind
        elif flow.state == SHARING:
            self.sharing_n -= 1
        flow.state = ENDED
        flow.epoch += 1

    def _rebalance(self) -> None:
        """Restore max(cap of capped) <= f <= min(cap of sharing) after a change (water-filling)."""
        egress = self.egress
        if not self.sharing_n and self.capped_sum <= egress:
            self.fair = INF  # the common case: every transfer gets what its own path allows
            if self._cap_kept:
                self._cap_kept = False
                self._capped_cap = []
            return
        if not self._cap_kept:
            # contention starts: the capped flows by cap (keys are unique, so the heap pops them
            # in the same order as one kept all along would)
            self._cap_kept = True
            self._capped_cap = [(-e[3].cap, e[1], e[2], e[3]) for e in self._capped_end if e[3].epoch == e[2]]
            heapify(self._capped_cap)
        capped_cap, sharing_cap = self._capped_cap, self._sharing_cap  # _compact keeps these lists
        while True:
            sharing_n = self.sharing_n
            if sharing_n:
                self.fair = fair = max(0.0, egress - self.capped_sum) / sharing_n
            else:
                self.fair = fair = INF
            while capped_cap and capped_cap[0][3].epoch != capped_cap[0][2]:  # dead entries off the top
                heappop(capped_cap)
            if capped_cap:
                big = capped_cap[0][3]
                if big.cap > fair if sharing_n else self.capped_sum > egress:
                    left = self.left(big)
                    self._leave(big)
                    self._to_sharing(big, left)
                    continue
            while sharing_cap and sharing_cap[0][3].epoch != sharing_cap[0][2]:
                heappop(sharing_cap)
            if sharing_cap:
                small = sharing_cap[0][3]
                if small.cap <= fair:
                    left = self.left(small)
                    self._leave(small)
                    self._to_capped(small, left)
                    continue
            break

    def _compact(self) -> None:
        live = self.capped_n + self.sharing_n
        for name in ("_capped_end", "_capped_cap", "_sharing_end", "_sharing_cap"):
            heap = getattr(self, name)
            if len(heap) > 2 * live + 64:
                heap[:] = [entry for entry in heap if entry[3].epoch == entry[2]]
                heapify(heap)
