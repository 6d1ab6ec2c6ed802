"""The kvm backend's base image: the jail's package list plus a kernel, systemd and sshd.

Built once by mmdebstrap, turned into an ext4 file system (`mkfs.ext4 -d`, no loop mount)
and then into qcow2, and cached by a hash of everything that decides its contents. The
kernel and initrd are kept beside the disk, since the guest boots its kernel directly.
"""

import dataclasses
import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

from . import images, paths
from .errors import PreflightError, StepFailed

log = logging.getLogger(__name__)

#: Files copied into the image, by where they go in it.
GUEST_FILES = {
    "initramfs.conf": ("etc/initramfs-tools/conf.d/orch.conf", 0o644),
    "initramfs-modules": ("etc/initramfs-tools/modules", 0o644),
    "orch-seed": ("usr/local/sbin/orch-seed", 0o755),
    "orch-seed.service": ("etc/systemd/system/orch-seed.service", 0o644),
    "80-orch.network": ("etc/systemd/network/80-orch.network", 0o644),
    "orch-sshd.conf": ("etc/ssh/sshd_config.d/orch.conf", 0o644),
}
ENABLE = ["systemd-networkd.service", "orch-seed.service", "ssh.service"]
# Debian's own Apache units would start a root Apache with the stock configuration; the
# others only slow an emulated guest's boot down (orch reprovisions; nobody logs in).
MASK = ["apache2.service", "apache-htcacheclean.service", "e2scrub_reap.service",
        "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
        "getty-static.service", "getty@tty1.service"]
TOOLS = ("mmdebstrap", "mkfs.ext4", "qemu-img")


@dataclasses.dataclass(frozen=True)
class VMImage:
    """A built VM base image: a qcow2 disk and the kernel and initrd it boots."""

    key: str
    path: Path

    @property
    def disk(self):
        return self.path / "disk.qcow2"

    @property
    def kernel(self):
        return self.path / "vmlinuz"

    @property
    def initrd(self):
        return self.path / "initrd.img"

    def manifest(self):
        return json.loads((self.path / "manifest.json").read_text())


def package_list():
    return sorted(set(images.package_list()) | set(
        images.package_list(paths.IMAGES / "vm-packages.txt")))


def image_key(config, packages=None):
    """A short hash of the suite, mirror, packages, disk size and the files put in."""
    packages = packages or package_list()
    digest = hashlib.sha256()
    digest.update(images.image_key(config.suite, packages, config.mirror).encode())
    digest.update(str(config.kvm_disk_bytes).encode())
    for name in sorted(GUEST_FILES):
        digest.update(name.encode() + b"\0" + (paths.IMAGES / "vm" / name).read_bytes())
    return "vm-" + digest.hexdigest()[:16]


def current(config):
    """The image this configuration would use now, built or not."""
    key = image_key(config)
    return VMImage(key, config.images_dir / key)


def ensure(config, progress=None):
    """The cached VM image, built first when it is missing."""
    image = current(config)
    if (image.path / "manifest.json").exists():
        return image
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise PreflightError(f"{', '.join(missing)} not installed", step="image",
                             fix="run scripts/setup-host")
    config.images_dir.mkdir(parents=True, exist_ok=True)
    with open(config.images_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (image.path / "manifest.json").exists():
            _build(config, image, progress)
    return image


def _run(argv, what, progress=None):
    log.info("%s: %s", what, " ".join(argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        log.debug("%s: %s", what, line)
        if progress and line.startswith("I: "):
            progress(line[3:])
    if proc.wait() != 0:
        raise StepFailed(f"{what} exited {proc.returncode}: {' / '.join(tail[-3:])}",
                         step="image", detail="\n".join(tail),
                         fix="check that the Debian mirror is reachable and the package "
                             "lists under images/ are right")


def _build(config, image, progress):
    staging = image.path.with_name(image.path.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rootfs = staging / "rootfs"
    started = time.monotonic()
    try:
        argv = ["mmdebstrap", f"--variant={images.VARIANT}",
                f"--include={','.join(package_list())}", "--", config.suite, str(rootfs)]
        if config.mirror:
            argv.append(config.mirror)
        _run(argv, "mmdebstrap", progress)
        if progress:
            progress("preparing the guest's files")
        _customize(rootfs)
        _copy_boot_files(rootfs, staging)
        if progress:
            progress("making the disk")
        raw = staging / "disk.raw"
        _run(["mkfs.ext4", "-q", "-F", "-L", "orchroot", "-d", str(rootfs), str(raw),
              str(config.kvm_disk_bytes >> 20) + "M"], "mkfs.ext4")
        _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
              str(staging / "disk.qcow2")], "qemu-img")
        raw.unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(rootfs)
    manifest = {"key": image.key, "suite": config.suite, "mirror": config.mirror,
                "packages": package_list(), "disk_bytes": config.kvm_disk_bytes,
                "built_at": time.time(),
                "build_seconds": round(time.monotonic() - started, 1)}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in staging.iterdir():
        path.chmod(0o644)  # the hypervisor's own user reads the kernel, initrd and disk
    if image.path.exists():
        shutil.rmtree(image.path)
    staging.rename(image.path)
    log.info("VM image %s built in %.1f s", image.key, manifest["build_seconds"])


def _customize(rootfs):
    for name, (target, mode) in GUEST_FILES.items():
        dest = rootfs / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths.IMAGES / "vm" / name, dest)
        dest.chmod(mode)
    # Each guest gets its own host key and machine id; none may come from the image.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "etc/fstab").write_text("/dev/vda / ext4 errors=remount-ro 0 1\n")
    for verb, units in (("enable", ENABLE), ("mask", MASK)):
        _run(["chroot", str(rootfs), "systemctl", verb, "--quiet", *units],
             f"systemctl {verb}")
    # A small initramfs (MODULES=list, above) loads much faster in an emulated guest.
    _run(["chroot", str(rootfs), "update-initramfs", "-u", "-k", "all"], "update-initramfs")
    for suffix in ("dpkg-bak", "new", "old-dkms"):
        for leftover in (rootfs / "boot").glob(f"initrd.img-*.{suffix}"):
            leftover.unlink()


def _copy_boot_files(rootfs, staging):
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise StepFailed("the image has no kernel under /boot", step="image",
                         fix="keep linux-image-amd64 in images/vm-packages.txt")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = rootfs / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise StepFailed(f"the image has no initrd for kernel {version}", step="image",
                         fix="keep initramfs-tools in the image (linux-image-amd64 pulls it)")
    shutil.copyfile(kernels[-1], staging / "vmlinuz")
    shutil.copyfile(initrd, staging / "initrd.img")
