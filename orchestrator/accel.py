"""Whether KVM really runs a guest on this host, or the kvm backend must emulate.

`/dev/kvm` existing proves little: under some nested set-ups a 64-bit kernel hangs right
after it is loaded. The probe boots the VM image's own kernel under KVM with no root file
system; a kernel that gets as far as looking for one (and panics) has run its whole early
boot. The answer is cached per host kernel, QEMU binary and image kernel.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
PROBE_SECONDS = 20
# Printed once the kernel has set up everything but its root file system.
REACHED = ("Kernel panic", "VFS: Unable to mount root", "No working init found")


def _cache_key(image):
    qemu = shutil.which(QEMU) or ""
    parts = [os.uname().release, qemu, str(os.stat(qemu).st_mtime) if qemu else "",
             image.key]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def choose(config, image):
    """`kvm` when the probe passed on this host, else `qemu`."""
    if not os.path.exists("/dev/kvm") or shutil.which(QEMU) is None:
        return "qemu"
    cache = config.images_dir / f"accel-{_cache_key(image)}.json"
    try:
        known = json.loads(cache.read_text())
        log.info("KVM probe (cached in %s): %s; domains are of type %s", cache,
                 known["detail"], known["domain_type"])
        return known["domain_type"]
    except (OSError, ValueError, KeyError):
        pass
    works, detail = probe(image.kernel)
    chosen = "kvm" if works else "qemu"
    log.info("KVM probe: %s; domains will be of type %s", detail, chosen)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"domain_type": chosen, "detail": detail,
                                 "at": time.time()}) + "\n")
    return chosen


def probe(kernel, seconds=PROBE_SECONDS):
    """Boot `kernel` under KVM with no disk; (True, how far) when it reached the end."""
    argv = [QEMU, "-accel", "kvm", "-m", "256", "-nodefaults", "-no-reboot",
            "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=seconds)
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(
            exc.stdout, bytes) else (exc.stdout or "")
        if any(mark in output for mark in REACHED):
            return True, "the kernel booted under KVM"
        return False, f"no sign of the kernel after {seconds} s under KVM"
    if any(mark in output for mark in REACHED):
        return True, f"the kernel booted under KVM in {time.monotonic() - started:.1f} s"
    last = output.strip().splitlines()[-1:] or ["no output"]
    return False, f"QEMU with KVM ended {proc.returncode}: {last[0]}"
