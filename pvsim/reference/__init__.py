"""The reference model: the simplest honest plain-SimPy model of a quickstart-style rollout.

This is the baseline `pvsim bench` measures the twin against (issue 18): the model a user would
write in an afternoon instead of using pvtwin. It reads the same scenario files, uses the same
rollout controllers (`shared.rollout`), the same distributions (`pvsim.dists`, the scenario's
`[device]` figures), the same defect cohorts and power-cut rate, and it models the same steps of a
device-update as the twin's Pantavisor devices take (pvsim/pantavisor/). What it leaves out is
what makes the twin a twin: no engine, no progress records, no boot env, no bootloader latch, no
disk; each step is one SimPy timeout of a drawn duration.

One generator process per device-update, one timeout per step:

| step | duration |
|---|---|
| poll | until the device's next poll (its fixed phase, `fleet.poll_interval_s`) after admission |
| download | the objects the device lacks, in parallel (the bundled releases have at most 5, the engine's limit), each at min(link, storage write speed, the Hub egress's equal share at the start); a dropped connection (`network_loss_probability`, at a uniform byte) fetches that object again in another round |
| write | linking the objects, the boot env write and a progress write (storage latency × 3 + `env_write_s`) |
| reboot or container restart | `boot_s` for a BSP change; stopping the changed containers (1 s) otherwise |
| start | the root container's `container_start_s` (after a reboot only) |
| ready or goal timeout | the app's `container_start_s` + `ready_s`; a `never_ready` app hits the 30 s group goal timeout, a `container_crash` app exits at `ready_s`, a `breaks_network` release hits the 120 s network timeout; each then takes a rollback reboot (`boot_s`) |
| commit delay | the later of the commit delay (25 s) and the containers' 30 s stability window |

A `kernel_panic` release boots twice (the panic, then the fallback) and is rolled back; a
`bad_signature` release is refused (WONTGO) after the metadata. A rolled-back device returns to
the last revision a reboot update committed (a non-reboot update is not a rollback point).

Power cuts (`faults.power_cuts_per_device_day`, exponential per busy device) restart the step
they hit, after the outage (`power_outage_s`) and a boot. Two variants model them:

* `interrupt`: SimPy's idiom, a power process per device-update interrupts the device's process;
* `predrawn`: the next cut time is drawn, and each step compares its end with it.

Scenario features the reference does not model are refused with a one-line error naming the key
(`check_supported`). `run_reference(scenario, variant)` returns outcome counts in the keys of
results.json (`committed`, `rolled_back`, ... and per release) plus its wall and CPU time.
"""

from pvsim.reference.fleet import VARIANTS, ReferenceFleet, check_supported, run_reference

__all__ = ["VARIANTS", "ReferenceFleet", "check_supported", "run_reference"]
