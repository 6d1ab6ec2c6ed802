"""Base images built by mmdebstrap from a declared package list, cached by its hash.

An image's id is the hash of its recipe (suite, variant, packages, mirror); a rebuild of
the same recipe gets the hash plus the time it was built, so it never replaces the image
tenants were made on. The file `current` in the cache names the image new tenants get;
when it names no image of the present recipe (the package list changed), the plain hash
is current and is built on first use.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from . import paths
from .errors import BadInput, PreflightError, StepFailed

log = logging.getLogger(__name__)

VARIANT = "minbase"
POINTER = "current"
ID_RE = re.compile(r"[0-9a-f]{16}(-[0-9]{8}T[0-9]{6}Z(-[0-9]+)?)?")


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


def _recipe_key(config, packages=None):
    return image_key(config.suite, packages or package_list(), config.mirror)


def is_built(config, image_id):
    return (config.images_dir / image_id / "manifest.json").is_file()


def current_id(config, packages=None):
    """The id of the image new tenants get (built or not)."""
    key = _recipe_key(config, packages)
    try:
        named = (config.images_dir / POINTER).read_text().strip()
    except FileNotFoundError:
        named = ""
    if ID_RE.fullmatch(named) and named.startswith(key) and is_built(config, named):
        return named
    return key


def rootfs_of(config, image_id):
    return config.images_dir / image_id / "rootfs"


def rootfs_for(config, packages=None):
    """Where the current image for this configuration and package list lives."""
    return rootfs_of(config, current_id(config, packages))


def id_of(config, rootfs):
    """The id of the cached image whose root is `rootfs`, or None when it is not one."""
    rootfs = Path(rootfs)
    if rootfs.name == "rootfs" and rootfs.parent.parent == config.images_dir:
        return rootfs.parent.name
    return None


def resolve(config, name):
    """The id an operator's `current` or image id stands for; BadInput when none is built."""
    image_id = current_id(config) if name == "current" else name
    if not ID_RE.fullmatch(image_id) or not is_built(config, image_id):
        raise BadInput(f"there is no built base image {name!r}", step="image",
                       fix="see `orch image list`, or build one with `orch image rebuild`")
    return image_id


def ensure(config, packages=None, progress=None):
    """Return the root of the current base image, building it first when it is missing."""
    packages = packages or package_list()
    image_id = current_id(config, packages)
    if is_built(config, image_id):
        return rootfs_of(config, image_id)

    config.images_dir.mkdir(parents=True, exist_ok=True)
    with _locked(config):
        if not is_built(config, image_id):
            _build(config, packages, config.images_dir / image_id, progress)
    return rootfs_of(config, image_id)


def rebuild(config, progress=None):
    """Build a new image of the present recipe and make it current; return its entry."""
    packages = package_list()
    key = _recipe_key(config, packages)
    config.images_dir.mkdir(parents=True, exist_ok=True)
    with _locked(config):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        image_id, number = f"{key}-{stamp}", 1
        while (config.images_dir / image_id).exists():
            number += 1
            image_id = f"{key}-{stamp}-{number}"
        _build(config, packages, config.images_dir / image_id, progress)
        _set_current(config, image_id)
    log.info("base image %s is current", image_id)
    return next(entry for entry in catalog(config) if entry["id"] == image_id)


def _set_current(config, image_id):
    pointer = config.images_dir / POINTER
    temporary = pointer.with_name(f".{POINTER}.new")
    temporary.write_text(image_id + "\n")
    os.replace(temporary, pointer)


@contextlib.contextmanager
def _locked(config):
    """One build or removal at a time in the cache, whichever state directory asks."""
    with open(config.images_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def catalog(config):
    """Every built image in the cache, oldest first: id, built_at, packages, current."""
    if not config.images_dir.is_dir():
        return []
    current = current_id(config)
    entries = []
    for folder in config.images_dir.iterdir():
        if not ID_RE.fullmatch(folder.name) or not is_built(config, folder.name):
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        entries.append({
            "id": folder.name, "built_at": manifest.get("built_at", 0),
            "suite": manifest.get("suite", ""), "packages": len(manifest.get("packages", [])),
            "current": folder.name == current, "shared": folder.is_symlink(),
            "rootfs": str(folder / "rootfs"),
        })
    return sorted(entries, key=lambda e: (e["built_at"], e["id"]))


def mounted_lowers(mounts_text=None):
    """Every lower layer of an overlay mounted anywhere on this host, as written there."""
    if mounts_text is None:
        mounts_text = Path("/proc/self/mounts").read_text()
    lowers = set()
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "overlay":
            continue
        for option in fields[3].split(","):
            if option.startswith("lowerdir="):
                lowers.update(option.removeprefix("lowerdir=").split(":"))
    return lowers


def prune(config, in_use, mounts_text=None):
    """Remove every image that is not current, not in `in_use` (ids) and not the lower
    layer of any overlay mounted on this host; return (removed, kept) with reasons kept.

    An entry that is a symbolic link (an image shared from another cache) is unlinked;
    what it points to is never touched.
    """
    mounted = mounted_lowers(mounts_text)
    removed, kept = [], []
    with _locked(config) if config.images_dir.is_dir() else contextlib.nullcontext():
        for entry in catalog(config):
            folder = config.images_dir / entry["id"]
            rootfs = folder / "rootfs"
            if entry["current"]:
                kept.append({"id": entry["id"], "reason": "current"})
            elif entry["id"] in in_use:
                kept.append({"id": entry["id"], "reason": "used by " + ", ".join(
                    sorted(in_use[entry["id"]]))})
            elif _names_of(folder, rootfs) & mounted:
                kept.append({"id": entry["id"], "reason": "mounted as a lower layer on this "
                             "host (by another state directory?)"})
            else:
                _remove(folder)
                removed.append(entry["id"])
                log.info("base image %s removed", entry["id"])
    return removed, kept


def _names_of(folder, rootfs):
    """How a mount's options may name this image's root. A linked entry is named by its
    own path only: unlinking it never touches what it points to."""
    if folder.is_symlink():
        return {str(rootfs)}
    return {str(rootfs), str(rootfs.resolve())}


def _remove(folder):
    if folder.is_symlink():
        folder.unlink()
        return
    # Its manifest first: a removal cut short leaves a folder no one takes for an image.
    (folder / "manifest.json").unlink()
    shutil.rmtree(folder)


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
