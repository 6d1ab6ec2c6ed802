"""Base image ids, the current pointer, the catalog and pruning, on a fake image cache."""

import json
import os

import pytest

from orchestrator import images
from orchestrator.errors import BadInput

PACKAGES = ["apache2", "python3"]


def fake_image(config, image_id, built_at=1.0):
    folder = config.images_dir / image_id
    (folder / "rootfs").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"suite": "bookworm", "packages": PACKAGES, "built_at": built_at}))
    return folder


@pytest.fixture
def key(config, monkeypatch):
    monkeypatch.setattr(images, "package_list", lambda path=None: PACKAGES)
    return images.image_key(config.suite, PACKAGES, config.mirror)


def test_the_plain_hash_is_current_until_a_rebuild_names_another(config, key):
    assert images.current_id(config) == key
    fake_image(config, key)
    rebuilt = f"{key}-20261203T120000Z"
    fake_image(config, rebuilt, built_at=2.0)
    assert images.current_id(config) == key
    images._set_current(config, rebuilt)
    assert images.current_id(config) == rebuilt
    assert images.rootfs_for(config) == config.images_dir / rebuilt / "rootfs"
    assert images.resolve(config, "current") == rebuilt
    assert images.resolve(config, key) == key


def test_a_pointer_to_another_recipe_or_a_missing_image_is_not_followed(config, key):
    fake_image(config, key)
    config.images_dir.joinpath("current").write_text("0123456789abcdef-20261203T120000Z\n")
    assert images.current_id(config) == key  # another package list's image
    config.images_dir.joinpath("current").write_text(f"{key}-20261203T120000Z\n")
    assert images.current_id(config) == key  # named, but not built


def test_resolve_refuses_what_is_not_built(config, key):
    with pytest.raises(BadInput, match="orch image list"):
        images.resolve(config, "current")
    with pytest.raises(BadInput):
        images.resolve(config, "../../etc")


def test_id_of_maps_a_cached_root_back_to_its_image(config, key):
    assert images.id_of(config, config.images_dir / key / "rootfs") == key
    assert images.id_of(config, "/somewhere/else/rootfs") is None


def test_catalog_lists_built_images_oldest_first(config, key):
    fake_image(config, f"{key}-20261203T120000Z", built_at=2.0)
    fake_image(config, key, built_at=1.0)
    (config.images_dir / f"{key}-x.building").mkdir()
    entries = images.catalog(config)
    assert [e["id"] for e in entries] == [key, f"{key}-20261203T120000Z"]
    assert [e["current"] for e in entries] == [True, False]


def test_mounted_lowers_reads_every_overlay_layer():
    text = ("overlay /t/a/root overlay rw,lowerdir=/img/a/rootfs,upperdir=/t/a/upper 0 0\n"
            "overlay /t/b/root overlay rw,lowerdir=/x:/y,upperdir=/t/b/upper 0 0\n"
            "/dev/vda / ext4 rw,lowerdir=/not/an/overlay 0 0\n")
    assert images.mounted_lowers(text) == {"/img/a/rootfs", "/x", "/y"}


def test_prune_keeps_current_used_and_mounted_images(config, key, tmp_path):
    old = f"{key}-20261201T000000Z"
    used = f"{key}-20261202T000000Z"
    mounted = f"{key}-20261203T000000Z"
    for number, image_id in enumerate((key, old, used, mounted)):
        fake_image(config, image_id, built_at=number)
    shared = tmp_path / "shared" / f"{key}-20261130T000000Z"
    (shared / "rootfs").mkdir(parents=True)
    (shared / "manifest.json").write_text("{}")
    os.symlink(shared, config.images_dir / shared.name)
    images._set_current(config, key)
    lower = config.images_dir / mounted / "rootfs"
    mounts = (f"overlay /t/root overlay rw,lowerdir={lower},upperdir=/t/upper 0 0\n"
              # another cache's tenant on what the link points to: the link may still go
              f"overlay /u/root overlay rw,lowerdir={shared / 'rootfs'},upperdir=/u/up 0 0\n")

    removed, kept = images.prune(config, {used: ["acme"]}, mounts_text=mounts)

    assert sorted(removed) == sorted([old, shared.name])
    assert {k["id"]: k["reason"] for k in kept} == {
        key: "current", used: "used by acme",
        mounted: "mounted as a lower layer on this host (by another state directory?)"}
    assert not (config.images_dir / old).exists()
    assert not (config.images_dir / shared.name).exists()
    assert (shared / "rootfs").is_dir()  # a shared image is unlinked, never removed
