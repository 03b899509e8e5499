"""The pantavisor model's Hub and network: polls, reports, metadata, object transfers, reachability.

A request to a reachable Hub is instantaneous; one to an unreachable Hub (the device's link or the
Hub is out, or the running revision broke the network) fails when it times out. An object is one
transfer attempt of `pvsim.transfer` (the network every update model shares) into
`objects/<sha>.tmp`; a corrupt release object fails its hash.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from heapq import heappush
from typing import TYPE_CHECKING, Any

from pvsim.device import INF, DeviceRun
from pvsim.fairshare import CAPPED
from pvsim.pantavisor.agenda import DeviceBrain, FlowEnd, Queue, TransferDue
from pvsim.pantavisor.storage import MB
from pvsim.transfer import HTTP_TIMEOUT_S, attempt
from shared.engine import commands as C
from shared.engine import events as E
from shared.engine.progress import Msg

if TYPE_CHECKING:
    from pvsim.fairshare import Flow
    from pvsim.simdisk import SimDisk
    from pvsim.world import World
    from shared.engine.config import Config

# events without fields: one instance for every device
HUB_REACHED = E.HubReached()
HUB_REQUEST_FAILED = E.HubRequestFailed()
RETRIED = Msg.retried(0, 0).split(" ")[0] + " "  # "Retried N of M": the engine's intake message
NOT_RETRIED = Msg.retried(0, 0).rsplit(" ", 2)[0] + " "  # "Retried 0 ": a first intake
INTAKE_RETRY: dict[str, bool] = {}  # status message -> it reports an intake retry


class Network:
    """Part of PantavisorModel: the attributes it uses are set by PantavisorModel.__init__."""

    world: World
    config: Config
    size_mb: dict[str, float]
    corrupt: dict[str, int]
    defects: dict[str, tuple[str, float]]
    _sizes: dict[frozenset[str], dict[str, int]]
    event: Any  # the model's event cache

    if TYPE_CHECKING:

        def _defect(self, device: int, rev: str) -> str: ...
        def _own_disk(self, brain: DeviceBrain) -> SimDisk: ...
        def _intern(self, objects: frozenset[str]) -> frozenset[str]: ...
        def _storage(self, device: int, disk: SimDisk) -> E.StorageStats: ...

    def _poll(self, run: DeviceRun, brain: DeviceBrain, rev: str, queue: Queue) -> None:
        """A Hub poll now: the pending step (if the Hub still lists it) or a failed request."""
        engine = brain.engine
        if engine.watches_hub:
            # the Hub client keeps talking to the Hub while a remote update is tried (§3.5)
            if self._hub_ok(run, brain):
                brain.hub_confirmed = True
                queue.append(HUB_REACHED)
            else:
                queue.append(HUB_REQUEST_FAILED)
            return
        if not engine.accepts_remote_steps:
            return
        if not self._hub_ok(run, brain):
            return
        heard = brain.hub_progress.get(rev)
        if heard is not None and heard.is_final:
            return
        revision = self.world.revisions[int(rev)]
        signature_error = Msg.SIG_FAILED if self._defect(run.device, rev) == "bad_signature" else None
        if signature_error:
            self.world.count("bad_signature")
        step = self.event(E.Step, rev, revision.state, None, heard, signature_error)
        queue.append(self.event(E.PendingSteps, (step,)))

    def _hub_ok(self, run: DeviceRun, brain: DeviceBrain) -> bool:
        hit = self.defects.get(brain.booted)  # _defect(...) == "breaks_network", inlined: hot
        if hit is not None and hit[0] == "breaks_network" and self.world.table.defect_u[run.device] < hit[1]:
            return False
        return run.hub_reachable()

    def _next_failed_contact(self, run: DeviceRun, brain: DeviceBrain, now: float) -> float:
        """While the engine watches the Hub, the Hub client talks to it every PH_UPDATER_INTERVAL.
        Once a request succeeded, further successes change nothing, so only the first request that
        will fail is worth an event; it is found from the outage intervals, not by polling."""
        interval = self.config.updater_interval
        first = now + interval
        if self._defect(run.device, brain.booted) == "breaks_network":
            return first

        def first_poll_in(start: float, end: float) -> float:
            t = first if start <= first else first + math.ceil((start - first) / interval) * interval
            return t if t < end else INF

        best = INF
        until = self.world.until_s
        run.net_down_until(first)
        while run.net_start < min(best, until):
            best = min(best, first_poll_in(run.net_start, run.net_end))
            if best < INF:
                break
            run.net_down_until(run.net_end)
        outages = self.world.hub_outages
        k = max(0, bisect_right(outages.starts, first) - 1)
        while k < len(outages.starts) and outages.starts[k] < min(best, until):
            if outages.ends[k] > first:
                best = min(best, first_poll_in(outages.starts[k], outages.ends[k]))
            k += 1
        return best

    def _report(self, run: DeviceRun, brain: DeviceBrain, command: C.ReportProgress, queue: Queue) -> None:
        msg = command.record.status_msg
        intake = INTAKE_RETRY.get(msg)
        if intake is None:  # once per distinct message (messages are few)
            intake = INTAKE_RETRY[msg] = msg.startswith(RETRIED) and not msg.startswith(NOT_RETRIED)
        if intake:
            self.world.retries["intake"] += 1  # an update taken in again (after a reboot or a crash)
        if run.env._now < run.up_until and brain.booted not in self.defects:
            ok = True  # self._hub_ok(run, brain)'s first answer, inlined: hot
        else:
            ok = self._hub_ok(run, brain)
        if ok:
            brain.hub_progress[command.rev] = command.record
        if brain.engine.watches_hub:
            brain.hub_confirmed = brain.hub_confirmed or ok
            queue.append(HUB_REACHED if ok else HUB_REQUEST_FAILED)

    def _metadata(
        self, run: DeviceRun, brain: DeviceBrain, command: C.FetchMetadata, t: float, queue: Queue
    ) -> None:
        if not self._hub_ok(run, brain):
            self.world.retries["metadata"] += 1
            brain.push(t + HTTP_TIMEOUT_S, E.MetadataFailed(command.rev))
            return
        if self.world.table.full[run.device]:
            self.world.count("disk_full")
        # one sizes mapping per set of requested objects, shared by devices (the engine only reads it)
        sizes = self._sizes.get(command.shas)
        if sizes is None:
            sizes = self._sizes[command.shas] = {sha: int(self.size_mb.get(sha, 0.0) * MB) for sha in command.shas}
        queue.append(E.MetadataReceived(command.rev, sizes, self._storage(run.device, brain.disk)))

    def _fetch(self, run: DeviceRun, brain: DeviceBrain, command: C.FetchObject, t: float) -> None:
        """Start one object transfer. It starts now even when the batch's durable writes before it
        end at `t` (milliseconds): the Hub's egress only admits transfers at the present."""
        sha = command.sha
        mb = self.size_mb.get(sha, command.size / MB)
        if not self._hub_ok(run, brain):
            self.world.retries["object"] += 1
            brain.push(max(t, run.env._now) + HTTP_TIMEOUT_S, E.ObjectFetched(sha, ok=False))
            return
        if sha in self.corrupt and self._defect(run.device, str(self.corrupt[sha])) == "corrupt_object":
            answer = E.ObjectFetched(sha, ok=False, hash_mismatch=True)
        else:
            answer = self.event(E.ObjectFetched, sha)
        flow = attempt(run, mb, brain, self._transfer_ended, self._transfer_refixed)
        if brain.transfers is None:
            brain.transfers = {}
        brain.transfers[flow] = answer
        if flow.state == CAPPED:  # it runs at its own pace: it ends then, unless that changes
            brain.seq += 1  # brain.push, inlined (hot path)
            heappush(brain.agenda, (flow.end, brain.seq, FlowEnd(flow, flow.fixed)))

    def _transfer_refixed(self, flow: Flow, end: float, token: int) -> None:
        """The egress's contention changed a running transfer's pace: it ends at `end` now."""
        brain: DeviceBrain = flow.tag[0]
        brain.push(end, FlowEnd(flow, token))
        if brain.waker is not None:
            brain.waker(end)

    def _transfer_ended(self, flow: Flow, brain: DeviceBrain, at: float, ok: bool, moved: float) -> None:
        """The egress ended a transfer while it shared it (now), or an outage stopped it (its
        request fails at `at`): the device hears it then."""
        answer = brain.transfers.pop(flow, None) if brain.transfers else None
        if answer is None:
            return  # the device lost it (a power cut) in the same instant
        if ok and answer.hash_mismatch:
            self.world.count("corrupt_object")
        brain.push(at, TransferDue(answer if ok else E.ObjectFetched(answer.sha, ok=False), moved))
        if brain.waker is not None:
            brain.waker(at)

    def _flow_end(self, run: DeviceRun, brain: DeviceBrain, entry: FlowEnd, queue: Queue) -> None:
        """A transfer's fixed end came (the agenda's FlowEnd): if the egress confirms it, the
        object arrived (or the connection dropped there)."""
        flow = entry.flow
        if not self.world.egress.complete(flow, entry.token):
            return  # stopped, or slowed down by contention: another entry will come
        answer = brain.transfers.pop(flow)  # type: ignore[union-attr]  # it runs: the dict is there
        if flow.tag[1]:  # outcome(flow), inlined (hot): the connection dropped
            flow.tag = None
            self.world.count("network_losses")
            answer = E.ObjectFetched(answer.sha, ok=False)
        else:
            flow.tag = None
            if answer.hash_mismatch:
                self.world.count("corrupt_object")
        self._fetched(run, brain, answer, flow.size, queue)

    def _fetched(self, run: DeviceRun, brain: DeviceBrain, event: E.ObjectFetched, mb: float, queue: Queue) -> None:
        """A transfer ended (ok, failed or corrupt): a complete object goes into the pool; the bytes
        of a failed or corrupt one are thrown away (the engine asks for the whole object again)."""
        if event.ok:
            # renamed into place after its hash matched: the object is in the pool
            run.mb_written += mb
            disk = self._own_disk(brain)
            disk.objects = self._intern(disk.objects | {event.sha})
        else:
            run.mb_wasted += mb
            self.world.retries["object"] += 1
        queue.append(event)

    def _stop_transfers(self, run: DeviceRun, brain: DeviceBrain) -> None:
        """Running transfers are cut (power, the update is over): what they moved is thrown away."""
        transfers = brain.transfers
        if transfers:
            egress = self.world.egress
            for flow in transfers:
                run.mb_wasted += egress.stop(flow)
        # None rather than the emptied dict: a dict that held flows keeps its table and stays tracked
        # by the cyclic collector, and every resting device of the fleet would keep one (measured:
        # 20 000 dicts of 224 bytes on the quickstart, each scanned by every full collection).
        brain.transfers = None
