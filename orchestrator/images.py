"""Base images built once by mmdebstrap from a declared package list, cached by its hash."""

import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import time

from . import paths
from .errors import PreflightError, StepFailed

log = logging.getLogger(__name__)

VARIANT = "minbase"


def package_list(path=None):
    """The packages named in the image's list file, comments and blank lines left out."""
    path = path or paths.IMAGES / "base-packages.txt"
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return sorted(set(names))


def image_key(suite, packages, mirror=""):
    """A short hash of everything that decides the image's contents."""
    recipe = json.dumps(
        {"suite": suite, "variant": VARIANT, "packages": sorted(packages), "mirror": mirror},
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def rootfs_for(config, packages=None):
    """Where the image for this configuration and package list lives (built or not)."""
    packages = packages or package_list()
    return config.images_dir / image_key(config.suite, packages, config.mirror) / "rootfs"


def ensure(config, packages=None, progress=None):
    """Return the root of the cached base image, building it first when it is missing."""
    packages = packages or package_list()
    key = image_key(config.suite, packages, config.mirror)
    image_dir = config.images_dir / key
    rootfs = image_dir / "rootfs"
    if (image_dir / "manifest.json").exists():
        return rootfs

    config.images_dir.mkdir(parents=True, exist_ok=True)
    with open(config.images_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image_dir / "manifest.json").exists():
            return rootfs
        _build(config, packages, image_dir, progress)
    return rootfs


def _build(config, packages, image_dir, progress):
    if shutil.which("mmdebstrap") is None:
        raise PreflightError(
            "mmdebstrap is not installed", step="image",
            fix="run scripts/setup-host (or `apt-get install mmdebstrap`)",
        )
    staging = image_dir.with_name(image_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    argv = [
        "mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(packages)}",
        "--", config.suite, str(staging / "rootfs"),
    ]
    if config.mirror:
        argv.append(config.mirror)
    log.info("building base image %s: %s", image_dir.name, " ".join(argv))
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        log.debug("mmdebstrap: %s", line)
        if progress and line.startswith("I: "):
            progress(line[3:])
    if proc.wait() != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise StepFailed(
            f"mmdebstrap exited {proc.returncode}: {' / '.join(tail[-3:])}", step="image",
            fix="check that the Debian mirror is reachable and the package list is right",
            detail="\n".join(tail),
        )
    manifest = {
        "suite": config.suite, "variant": VARIANT, "packages": packages,
        "mirror": config.mirror, "built_at": time.time(),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if image_dir.exists():
        # Left by a build that died between its rename and its manifest; never in use.
        shutil.rmtree(image_dir)
    staging.rename(image_dir)
    log.info("base image %s built in %.1f s", image_dir.name, manifest["build_seconds"])
