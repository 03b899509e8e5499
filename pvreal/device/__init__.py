"""The real device: one daemon that runs shared.engine's Updater against real files, mounts,
runc containers and network namespaces, with a pv-ctrl socket (pvreal.ctrl).

- `clock`: the engine's named timers on the monotonic clock;
- `latch`: the bootloader's try-boot latch, applied by the daemon itself when it is not PID 1;
- `containers`: engine container commands → mounts + netns + runc, and exit watching;
- `executor`: each engine command → its real effect (and the event it produces);
- `daemon`: the engine loop, reboots included (docs/device.md).
"""
