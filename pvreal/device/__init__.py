"""The real device: one daemon that runs shared.engine's Updater against real files, mounts,
runc containers and network namespaces, with a pv-ctrl socket (pvreal.ctrl).

- `clock`: the engine's named timers on the monotonic clock;
- `latch`: the bootloader's try-boot latch, applied by the daemon itself when it is not PID 1;
- `containers`: engine container commands → mounts + netns + runc, and exit watching;
- `executor`: each engine command → its real effect (and the event it produces);
- `daemon`: the engine loop, reboots included (docs/device.md).
"""


def guest_main(boot):
    """PID 1 in the QEMU guest (pvreal.qemu.guest_init hands over here): see pvreal.device.guest.
    Imported lazily so that `import pvreal.device` stays cheap everywhere else."""
    from pvreal.device.guest import guest_main as run

    return run(boot)
