"""Deploying pvreal to a QEMU guest booted by a real GRUB (the boot chain of a Pantavisor device).

- `kernel`: a Debian kernel package, downloaded with apt into a cache and unpacked (vmlinuz + modules)
- `initramfs`: a newc cpio with python3, its stdlib, pvtwin (shared, pvreal), busybox, runc, modules
- `grub`: `grub.lnx` (lnxboot.img + core.img) whose embedded config applies the pv_rev/pv_try latch
- `disk`: the raw storage disk (MBR + one ext4 partition holding boot/grubenv and trails/<rev>/.pv/)
- `build`: the cached, incremental build of all four; `runner` + `qmp`: boot them under a timeout
- `guest_init`: PID 1 in the guest until pvreal.device exists (the boot chain test harness)
- `timeline`: the console turned into boots, live or afterwards, with each boot's time breakdown
- `scenarios` + `resetpoints`: end-to-end runs of the real device, hard-reset points
See docs/qemu.md.
"""
