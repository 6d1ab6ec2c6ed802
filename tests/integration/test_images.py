"""`orch image rebuild|list|prune` and the rolling move: tenants move onto a new base image
one at a time keeping their upper layer, a tenant that fails its check on the new image
goes back to its old one, and a start after a reboot mounts the image a tenant is on.

The one image this suite builds besides the shared base image is made here, in a cache of
this test's own; the shared base image enters that cache as a symbolic link, so a prune
here can only unlink it."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator import config as config_mod, images

from .conftest import IMAGES, in_jail, orch_instance

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def orch_images(tmp_path):
    shared = config_mod.from_mapping({"images": {"dir": str(IMAGES)}}, tmp_path / "unused")
    images.ensure(shared)
    base = images.current_id(shared)
    own = tmp_path / "images"
    own.mkdir()
    os.symlink(IMAGES / base, own / base)
    try:
        with orch_instance(tmp_path / "orch-home") as instance:
            conf = instance.home / "config.toml"
            conf.write_text(conf.read_text().replace(f'"{IMAGES}"', f'"{own}"'))
            instance.config = config_mod.load(instance.env)
            instance.own_images = own
            instance.base_image = base
            yield instance
    finally:
        shutil.rmtree(own)  # the image built here; the link to the shared one goes with it
    assert (IMAGES / base / "manifest.json").is_file()


def lower(orch, name):
    """The lower layer the tenant's root is mounted over now, from /proc/mounts."""
    root = str(orch.home / "tenants" / name / "root")
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == root:
            options = dict(o.split("=", 1) for o in fields[3].split(",") if "=" in o)
            return Path(options["lowerdir"])
    return None


def listing(orch):
    return {i["id"]: i for i in orch.json("image", "list")[1]["images"]}


def test_rebuild_and_a_rolling_move_with_one_tenant_put_back(orch_images, tmp_path):
    orch = orch_images
    old = orch.base_image
    ok = orch.create("imgok")
    orch.create("imgbad")
    # imgbad's own code needs a Perl module of the base image.
    fragment = tmp_path / "fragment.conf"
    fragment.write_text("PerlModule Text::Wrap\n")
    orch.run("tenant-config", "imgbad", str(fragment))
    in_jail(ok, "tee", "/srv/tenant/kept.txt", input_text="the tenant's own\n").check_returncode()
    assert listing(orch)[old]["tenants"] == ["imgbad", "imgok"]

    code, built = orch.json("image", "rebuild")
    new = built["id"]
    assert code == 0 and new != old and new.startswith(old)  # same package list, new image
    shown = listing(orch)
    assert shown[new]["current"] and shown[new]["tenants"] == []
    assert not shown[old]["current"] and shown[old]["tenants"] == ["imgbad", "imgok"]
    new_root = orch.own_images / new / "rootfs"
    wraps = {p.resolve() for p in new_root.glob("usr/share/perl/*/Text/Wrap.pm")}
    assert len(wraps) == 1
    wraps.pop().unlink()  # the new image lacks what imgbad's code needs
    masters = {n: orch.show(n)["master_pid"] for n in ("imgok", "imgbad")}

    done = orch.run("reprovision", "--all", "--image", "current", "--json", check=False)
    assert done.returncode == 1, done.stderr
    reports = {r["name"]: r for r in json.loads(done.stdout)["tenants"]}

    assert reports["imgok"]["failure"] is None and reports["imgok"]["image"] == new
    assert lower(orch, "imgok") == new_root
    status, body, _ = orch.get("imgok.example.test")
    assert status == 200 and f"tenant imgok: uid={ok['uid']} " in body
    assert orch.show("imgok")["master_pid"] != masters["imgok"]
    assert in_jail(orch.show("imgok"), "cat", "/srv/tenant/kept.txt").stdout == \
        "the tenant's own\n"

    failure = reports["imgbad"]["failure"]
    assert f"on base image {new}" in failure and f"runs on base image {old} again" in failure
    assert reports["imgbad"]["image"] == old
    assert lower(orch, "imgbad") == orch.own_images / old / "rootfs"
    assert orch.get("imgbad.example.test")[0] == 200
    shown = json.loads(orch.run("tenant-config", "imgbad", "--show", "--json").stdout)
    assert shown["fragment"] == "PerlModule Text::Wrap\n"
    assert orch.show("imgbad")["last_converge"]["failure"] == failure

    # After a reboot, a start mounts the image the tenant is on, not the current one.
    orch.run("stop", "imgbad")
    subprocess.run(["umount", "--", str(orch.home / "tenants/imgbad/root")], check=True)
    orch.run("start", "imgbad")
    assert lower(orch, "imgbad") == orch.own_images / old / "rootfs"
    assert orch.get("imgbad.example.test")[0] == 200

    shown = listing(orch)
    assert shown[old]["tenants"] == ["imgbad"] and shown[new]["tenants"] == ["imgok"]
    code, pruned = orch.json("image", "prune")
    assert pruned["removed"] == [] and {k["id"] for k in pruned["kept"]} == {old, new}

    orch.run("delete-tenant", "imgbad")
    code, pruned = orch.json("image", "prune")
    assert pruned["removed"] == [old]
    assert not (orch.own_images / old).exists() and (orch.own_images / new).is_dir()
    assert (IMAGES / old / "rootfs").is_dir()  # the shared image: only its link went


def test_bad_image_arguments_exit_2_and_change_nothing(orch_images):
    code, doc = orch_images.json("reprovision", "--all", "--image", "nosuch", check=False)
    assert code == 2 and "orch image list" in doc["error"]["fix"]
    code, doc = orch_images.json("reprovision", "--all", "--image", "current", "--check",
                                 check=False)
    assert code == 2 and doc["error"]["step"] == "parse"
    assert listing(orch_images)[orch_images.base_image]["current"]
