"""The `pantavisor` update model: simulated devices that interpret the shared engine's commands.

Nothing here decides anything Pantavisor decides (statuses, retries, rollback, commit, the latch):
the engine (`shared.engine`) does, through `Updater.boot` / `Updater.handle`. The model only gives
each command a modelled duration and an outcome, and feeds the resulting events back as
`shared.engine.driver` states:

| command | here | module |
|---|---|---|
| durable steps (progress, trail, links, env, done, GC) | storage latency + size / write speed, in order; a power cut keeps the ones completed before it, loses the rest, and tears a non-redundant env write | storage |
| FetchMetadata | instant Hub request: sizes and storage figures, or MetadataFailed when unreachable | network |
| FetchObject | transfer over the device link and the hub's egress, shared max-min fairly (`pvsim.transfer`); fails at outages and dropped connections; corrupt release objects fail their hash | network |
| ReportProgress | instant Hub request: HubReached / HubRequestFailed; the Hub's copy of the step's progress | network |
| Start/StopContainers | modelled start and ready times; release defects crash a container or keep it from being ready | containers |
| ArmTimer / CancelTimer | a deadline in the device's agenda | agenda, model |
| Reboot | boot delay, then the bootloader latch (`shared.engine.bootloader.choose_boot`) and a new Updater from what survived | power |

Event economy: a batch of commands returned by one `handle` call costs at most one SimPy event
(the sum of its durable writes), and none when the device only sleeps after it; everything else
the device is waiting for (timers, transfers, containers, the next poll) sits in a small
per-device agenda and the device sleeps until the earliest entry. Waits are `call_later` events that call the device's next step (`DeviceUpdate`),
not generator processes; only what a power cut can interrupt runs as a process. Engine calls are
plain Python calls, through `pvsim.engine_memo`: devices whose engines are equal share one.
"""

from pvsim.pantavisor.agenda import DeviceBrain
from pvsim.pantavisor.model import PantavisorModel
from pvsim.pantavisor.update import DeviceUpdate

__all__ = ["DeviceBrain", "DeviceUpdate", "PantavisorModel"]
