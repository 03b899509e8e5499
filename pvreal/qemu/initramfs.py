"""The guest's initramfs: python3 + stdlib, pvtwin (shared, pvreal) + deps, busybox, runc, modules.

Host paths of the interpreter, libpython and the stdlib are kept as they are in the guest (a pyenv
interpreter stays under /root/.pyenv/...), because the interpreter finds its stdlib relative to its
real path and libpython through its RUNPATH; /usr/bin/python3 is a symlink to it. Compiled
extensions therefore match the interpreter that built them.
"""

from __future__ import annotations

import compileall
import gzip
import hashlib
import importlib.metadata as metadata
import io
import json
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pvreal import tools
from pvreal.qemu import kernel as kernel_mod
from pvreal.qemu import methodcache
from pvreal.qemu.cpio import CpioWriter
from pvreal.tools import ToolError

GUEST_PYTHON_PATH = "/usr/lib/pvtwin"  # shared/, pvreal/ and their dependencies
PACKAGES = ("shared", "pvreal")  # pvsim is not needed on a device
# What the device side of pvreal imports at run time: cryptography (signatures, with its compiled
# module), pyroute2 (network namespaces); their requirements follow.
# (rich, used by `pvreal rev show`, is left out: with pygments it would add ~10 MB that GRUB has
# to read through BIOS int13 at every boot.)
DISTRIBUTIONS = ("cryptography", "pyroute2")

# Modules loaded at every boot (storage disk) and those shipped for the runtime to load on demand.
BOOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
RUNTIME_MODULES = (
    "loop",
    "squashfs",
    "overlay",
    "dm_verity",
    "veth",
    "bridge",
    "virtio_net",
)
# The guest's watchdog driver: the first of these the kernel has (the cloud kernel has no i6300esb,
# pvreal.qemu.kernel); pvtwin-modules.json names it for guest_init's `watchdog` action.
WATCHDOG_MODULES = ("i6300esb", "softdog")

# Every byte is read by GRUB through BIOS int13 and unpacked by the kernel at every boot under
# TCG: what a device never imports stays out (interactive tools, databases, GUIs, test suites).
STDLIB_SKIP_DIRS = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
    "distutils", "site-packages", "dist-packages", "__phello__", "msilib",
    "curses", "dbm", "xmlrpc", "wsgiref", "venv", "sqlite3", "xml",
}  # fmt: skip
STDLIB_SKIP_FILES = {
    "turtle.py", "pydoc.py", "_pydecimal.py", "doctest.py", "pdb.py", "mailbox.py", "imaplib.py",
    "nntplib.py", "smtplib.py", "ftplib.py", "poplib.py", "telnetlib.py", "tabnanny.py",
    "cProfile.py", "profile.py", "trace.py", "idlelib.py", "_osx_support.py",
}  # fmt: skip
# Also left out: the CJK codecs, SQLite, the XML parsers, and OpenSSL's hash module: hashlib falls
# back to its built-in SHA-256/SHA-1/MD5/BLAKE2 modules (loading _hashlib, and with it libcrypto's
# relocations, cost 42 ms of every boot under TCG). `_ssl` stays: pyroute2 imports ssl.
DYNLOAD_SKIP = re.compile(
    r"^(_tkinter|_test|xxlimited|_ctypes_test|_xxtestfuzz|xxsubtype|readline|_curses"
    r"|_dbm|_gdbm|nis|ossaudiodev|spwd|_crypt|audioop"
    r"|_codecs_|_multibytecodec|_sqlite3|pyexpat|_elementtree|_hashlib)"
)
# Parts of the distributions' closure a device never imports: cryptography's compiled module
# needs only cffi's `_cffi_backend` extension at run time; cffi's Python package and pycparser
# generate bindings at build time (checked: importing cryptography and verifying a signature
# loads neither).
DIST_SKIP_TOP = ("cffi", "pycparser")

DEVICES = {  # name: (major, minor); Python as PID 1 dies without /dev/urandom (platform notes 4b)
    "dev/console": (5, 1), "dev/null": (1, 3), "dev/zero": (1, 5), "dev/full": (1, 7),
    "dev/random": (1, 8), "dev/urandom": (1, 9), "dev/kmsg": (1, 11), "dev/tty": (5, 0),
    "dev/ttyS0": (4, 64),
}  # fmt: skip

INIT_SCRIPT = f"""#!/usr/bin/python3 -S
# PID 1: hand over to pvreal.qemu.guest_init at once (see docs/qemu.md). The first line is the
# boot-time breakdown's "Python started" mark (CLOCK_BOOTTIME = /proc/uptime, not mounted yet).
import sys, time
print(f"PVTWIN INIT uptime={{time.clock_gettime(time.CLOCK_BOOTTIME):.2f}}", flush=True)
sys.path.insert(0, "{GUEST_PYTHON_PATH}")
from pvreal.qemu.methodcache import CACHE_NAME, install
install("{GUEST_PYTHON_PATH}/" + CACHE_NAME)  # before any dataclass is defined
from pvreal.qemu.guest_init import main
main()
"""


@dataclass
class Plan:
    """Everything that goes into the archive, decided before anything is read in full."""

    files: dict[str, Path] = field(default_factory=dict)  # guest path -> host file
    generated: dict[str, bytes] = field(
        default_factory=dict
    )  # guest path -> content (mode 0755 if executable)
    executable: set[str] = field(default_factory=set)
    symlinks: dict[str, str] = field(default_factory=dict)
    directories: set[str] = field(default_factory=set)
    # the pvtwin checkout whose daemon's dataclass methods are compiled into the archive
    # (pvreal.qemu.methodcache) when it is written: derived from files fingerprinted here
    method_cache_from: Path | None = None

    def fingerprint(self) -> str:
        """Changes when an input file (content, or path+size+mtime for system files) changes."""
        digest = hashlib.sha256()
        for dest in sorted(self.files):
            source = self.files[dest]
            if dest.startswith(GUEST_PYTHON_PATH.lstrip("/") + "/") and source.suffix != ".so":
                if source.suffix == ".pyc" and "/__pycache__/" in dest:
                    continue  # derived from the .py beside it, compiled by plan()
                # pvtwin's own sources and pure-Python deps: by content, so that a touched but
                # unchanged file (an editor, a checkout) does not rebuild the archive
                digest.update(f"C {dest} ".encode() + hashlib.sha256(source.read_bytes()).digest())
                continue
            st = source.stat()
            digest.update(f"F {dest} {source} {st.st_size} {st.st_mtime_ns}\n".encode())
        for dest in sorted(self.generated):
            digest.update(f"G {dest} ".encode() + hashlib.sha256(self.generated[dest]).digest())
        for dest in sorted(self.symlinks):
            digest.update(f"L {dest} {self.symlinks[dest]}\n".encode())
        digest.update(" ".join(sorted(self.directories)).encode())
        return digest.hexdigest()


def plan(kern: kernel_mod.Kernel, repo: Path, cache: Path) -> Plan:
    """Decide the archive's contents for `kern` and the pvtwin checkout `repo`.

    The guest runs the interpreter that runs this build (so compiled extensions match it).
    `cache` keeps debug-stripped copies of large ELF files.
    """
    result = Plan()
    result.directories.update(
        ["proc", "sys", "dev", "tmp", "run", "mnt", "storage", "etc", "root", "sbin", "bin"]
    )
    result.symlinks["var/run"] = "../run"  # pyroute2 creates /var/run/netns
    result.generated["etc/passwd"] = b"root:x:0:0:root:/root:/bin/sh\n"
    result.generated["etc/group"] = b"root:x:0:\n"
    # CPython's interpreter behind any venv (undeclared in typeshed, hence getattr)
    _add_python(result, Path(getattr(sys, "_base_executable", sys.executable)).resolve())
    _add_pvtwin(result, repo, cache / "compiled")
    _add_tools(result)
    _add_modules(result, kern)
    result.generated["init"] = INIT_SCRIPT.encode()
    result.executable.add("init")
    result.method_cache_from = repo
    _strip_large_elves(result, cache / "stripped")
    return result


def _add_python(result: Plan, interpreter: Path) -> None:
    result.files[str(interpreter).lstrip("/")] = interpreter
    result.symlinks["usr/bin/python3"] = str(interpreter)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    # DESTSHARED is where the interpreter's own extension modules live (in a venv, platstdlib
    # points into the venv, which has no lib-dynload).
    dynload = Path(sysconfig.get_config_var("DESTSHARED")).resolve()
    tag = sys.implementation.cache_tag
    for path in _walk(stdlib, STDLIB_SKIP_DIRS):
        if path.parent == stdlib and path.name.startswith("config-"):
            continue
        if path.suffix != ".py" or (path.parent == stdlib and path.name in STDLIB_SKIP_FILES):
            continue
        # The stdlib goes in as sourceless .pyc beside where the .py would be (loaded without a
        # source check): half the bytes of .py + .pyc, and no compiling at boot under TCG.
        compiled = path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
        if compiled.exists() and compiled.stat().st_mtime >= path.stat().st_mtime:
            result.files[str(path.with_suffix(".pyc")).lstrip("/")] = compiled
        else:
            result.files[str(path).lstrip("/")] = path
    extensions = [p for p in sorted(dynload.glob("*.so")) if not DYNLOAD_SKIP.match(p.name)]
    for path in extensions:
        result.files[str(path).lstrip("/")] = path
    _add_shared_libraries(result, [interpreter, *extensions])


def _walk(root: Path, skip_dirs: set[str]) -> Iterable[Path]:
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            if entry.name not in skip_dirs:
                yield from _walk(entry, skip_dirs)
        elif entry.is_file():
            yield entry


ELF_STRIP_MIN_BYTES = 64_000
STRIP = "--strip-unneeded"


def _strip_large_elves(result: Plan, cache: Path) -> None:
    """Replace ELF files by `strip --strip-unneeded` copies (pyenv's libpython and extension
    modules carry their debug info, 12 MB of lib-dynload, and symbol tables the loader does not
    read: 3.4 MB of cryptography's and libpython's, 0.8 MB of lz4, that GRUB would read at every
    boot; the dynamic symbols stay). Kernel modules are left alone (signed)."""
    strip = shutil.which("strip")
    if strip is None:
        return
    for dest, source in list(result.files.items()):
        st = source.stat()
        if dest.endswith(".ko") or st.st_size < ELF_STRIP_MIN_BYTES or _head(source) != b"\x7fELF":
            continue
        key = hashlib.sha256(
            f"{source} {st.st_size} {st.st_mtime_ns} {STRIP}".encode()
        ).hexdigest()[:24]
        stripped = cache / f"{key}-{source.name}"
        if not stripped.exists():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = stripped.with_name(stripped.name + ".tmp")
            subprocess.run([strip, STRIP, "-o", str(tmp), str(source)], check=True)
            tmp.replace(stripped)
        result.files[dest] = stripped


def _add_pvtwin(result: Plan, repo: Path, compiled_cache: Path) -> None:
    for package in PACKAGES:
        root = repo / package
        # Compile ahead: under TCG, compiling ~100 modules at boot would cost seconds.
        compileall.compile_dir(root, quiet=1)
        for path in _walk(root, {"tests"}):
            if path.suffix in (".pyc",) and ".opt-" in path.name:
                continue
            if path.suffix in (".py", ".pyc", ".json", ".txt", ".cfg", ".toml"):
                dest = f"{GUEST_PYTHON_PATH}/{path.relative_to(repo)}".lstrip("/")
                result.files[dest] = path
    for dist in _distribution_closure(DISTRIBUTIONS):
        base = Path(str(dist.locate_file(""))).resolve()
        for entry in dist.files or ():
            path = Path(str(dist.locate_file(entry))).resolve()
            if not path.is_file() or not path.is_relative_to(base) or ".opt-" in path.name:
                continue
            relative = path.relative_to(base)
            top = relative.parts[0].split("-")[0]  # a package, a module or a .dist-info folder
            if top in DIST_SKIP_TOP or path.parent.name == "__pycache__":
                continue
            dest = f"{GUEST_PYTHON_PATH}/{relative}"
            if path.suffix == ".py":  # sourceless, like the stdlib: half the bytes to read
                path, dest = _compiled(path, dest, compiled_cache), dest[:-3] + ".pyc"
            result.files[dest.lstrip("/")] = path
            if path.suffix == ".so":
                _add_shared_libraries(result, [path])


def _compiled(source: Path, dest: str, cache: Path) -> Path:
    """`source` compiled to a .pyc whose tracebacks name its guest path `dest` (pip's own .pyc
    name the host's site-packages), cached by source path, size and mtime."""
    st = source.stat()
    key = hashlib.sha256(f"{source} {st.st_size} {st.st_mtime_ns} {dest}".encode()).hexdigest()[:24]
    compiled = cache / f"{key}-{source.stem}.pyc"
    if not compiled.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = compiled.with_name(compiled.name + ".tmp")
        py_compile.compile(str(source), cfile=str(tmp), dfile=dest, doraise=True)
        tmp.replace(compiled)
    return compiled


def _distribution_closure(names: Iterable[str]) -> list[metadata.Distribution]:
    """The distributions named and, recursively, what they require (extras ignored)."""
    found: dict[str, metadata.Distribution] = {}
    pending = list(names)
    while pending:
        requirement = pending.pop()
        name = re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if ";" in requirement:
                continue  # a requirement under a marker (e.g. Windows only) that pip did not install
            raise ToolError(f"Python package {name} is not installed", source=name) from None
        found[name] = dist
        for requirement in dist.requires or ():
            if "extra ==" not in requirement:
                pending.append(requirement)
    return list(found.values())


def _add_tools(result: Plan) -> None:
    busybox = Path(tools.require("busybox")).resolve()
    result.files["bin/busybox"] = busybox
    listing = tools.run([str(busybox), "--list"]).split()
    for applet in listing:
        if applet not in ("busybox", "init", "linuxrc"):
            result.symlinks[f"bin/{applet}"] = "busybox"
    # dm-verity for `dm:` root volumes: the guest opens them with real device-mapper
    # (pvreal.device.guest); optional like runc
    veritysetup = shutil.which("veritysetup")
    if veritysetup:
        result.files["usr/sbin/veritysetup"] = Path(veritysetup).resolve()
        _add_shared_libraries(result, [Path(veritysetup).resolve()])
    runc = shutil.which("runc")
    if runc:  # the container runtime; optional so that a host without runc can still boot-test
        result.files["usr/sbin/runc"] = Path(runc).resolve()
        _add_shared_libraries(result, [Path(runc).resolve()])


def _add_shared_libraries(result: Plan, binaries: Iterable[Path]) -> None:
    """The ldd closure of `binaries`, each library at the path ldd found it (RUNPATHs keep working)."""
    names = [str(b) for b in binaries]
    if names:  # one ldd for all of them: ~100 extension modules
        done = subprocess.run(["ldd", *names], capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            match = re.search(r"(/\S+)\s+\(0x", line)
            if not match:
                continue  # "statically linked", vdso
            library = Path(match.group(1))
            result.files.setdefault(str(library).lstrip("/"), library.resolve())


def _add_modules(result: Plan, kern: kernel_mod.Kernel) -> None:
    available = kernel_mod.module_index(kern.modules_dir)
    watchdog = next((m for m in WATCHDOG_MODULES if m in available), "")
    names = [*BOOT_MODULES, *RUNTIME_MODULES, *([watchdog] if watchdog else [])]
    order = kernel_mod.load_order(names, kern.modules_dir)
    table = {}
    for ko in order:
        relative = ko.relative_to(kern.modules_dir)
        name = kernel_mod.module_name(ko.name)
        table[name] = {"path": str(relative), "depends": kernel_mod.module_depends(ko)}
        result.files[f"lib/modules/{kern.version}/{relative}"] = ko
    index = {
        "version": kern.version, "boot": list(BOOT_MODULES), "watchdog": watchdog, "modules": table,
    }  # fmt: skip
    result.generated[f"lib/modules/{kern.version}/pvtwin-modules.json"] = json.dumps(
        index, indent=1, sort_keys=True
    ).encode()


# How the archive is compressed (the kernel has all of these built in: CONFIG_RD_*). The host
# tool, then the command; "gzip" and "none" need no tool.
COMPRESSORS = {
    "zstd": ("zstd", ["-12", "-T0", "-q", "-c"]),
    "lz4": ("lz4", ["-l", "-9", "-q", "-c"]),  # -l: the legacy frame the kernel unpacks
    "gzip": ("", []),
    "none": ("", []),
}
DEFAULT_COMPRESSION = "lz4"  # measured fastest overall under TCG (docs/qemu.md, "Boot time")


def write(result: Plan, out: Path, compression: str = DEFAULT_COMPRESSION) -> None:
    """Write the archive to `out`, compressed with `compression` (COMPRESSORS; gzip when its
    tool is missing)."""
    raw = io.BytesIO()
    archive = CpioWriter(raw)
    for directory in sorted(result.directories):
        archive.directory(directory)
    for dest, (major, minor) in sorted(DEVICES.items()):
        archive.char_device(dest, major, minor, 0o600 if dest == "dev/console" else 0o666)
    for dest in sorted(result.files):
        archive.copy(dest, result.files[dest])
    generated = dict(result.generated)
    if result.method_cache_from is not None:
        kept = out.with_name(out.name + ".methods")
        methodcache.record(kept, path=result.method_cache_from)
        generated[f"{GUEST_PYTHON_PATH.lstrip('/')}/{methodcache.CACHE_NAME}"] = kept.read_bytes()
        kept.unlink()
    for dest in sorted(generated):
        archive.file(dest, generated[dest], 0o755 if dest in result.executable else 0o644)
    for dest in sorted(result.symlinks):
        archive.symlink(dest, result.symlinks[dest])
    archive.close()
    tmp = out.with_name(out.name + ".tmp")
    tool, options = COMPRESSORS[compression]
    found = shutil.which(tool) if tool else None
    if found:
        with tmp.open("wb") as sink:
            subprocess.run([found, *options], input=raw.getvalue(), stdout=sink, check=True)
    elif compression == "none":
        tmp.write_bytes(raw.getvalue())
    else:
        tmp.write_bytes(gzip.compress(raw.getvalue(), compresslevel=3))
    tmp.replace(out)


def raw_size(result: Plan) -> int:
    return sum(p.stat().st_size for p in result.files.values()) + sum(
        map(len, result.generated.values())
    )


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)
