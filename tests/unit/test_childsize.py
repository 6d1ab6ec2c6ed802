"""The measured size of a mod_perl child: PSS from smaps_rollup, recorded per tenant and
for the host, and used for the worker count of later creates."""

import dataclasses
import json

from orchestrator import allocate, childsize, images, spec
from orchestrator.spec import TenantSpec
from orchestrator.tenants import Host

ROLLUP = """55d0c0a4b000-7ffd1a9f7000 ---p 00000000 00:00 0                          [rollup]
Rss:               21000 kB
Pss:               {pss} kB
Pss_Anon:           3000 kB
Shared_Clean:      15000 kB
Private_Dirty:      6000 kB
"""


def fake_proc(root, sizes):
    for pid, pss in sizes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "smaps_rollup").write_text(ROLLUP.format(pss=pss))
    return root


def test_the_largest_child_pss_is_taken(tmp_path):
    proc = fake_proc(tmp_path, {10: 9000, 11: 12000})
    assert childsize.pss_bytes(10, proc) == 9000 * 1024
    assert childsize.pss_bytes(99, proc) is None  # gone since it was listed
    assert childsize.largest_child([10, 11, 99], proc) == 12000 * 1024
    assert childsize.largest_child([99], proc) is None


class Measurable:
    can_measure_children = True

    def __init__(self, pids):
        self.pids = pids

    def worker_pids(self, tenant):
        return self.pids


def test_a_measurement_is_recorded_for_the_tenant_and_the_host(config, tmp_path,
                                                               monkeypatch):
    proc = fake_proc(tmp_path / "proc", {40: 20480, 41: 10240})
    real = childsize.pss_bytes
    monkeypatch.setattr(childsize, "pss_bytes", lambda pid, _=None: real(pid, proc))
    host = Host(config)
    try:
        allocate.allocate(host.store, TenantSpec("acme", "acme.example.test"), config,
                          lambda uid: False)
        host._backends["jail"] = Measurable([40, 41])
        tenant = host.store.get("acme")
        assert tenant.child_size_bytes is None
        assert childsize.measure(host, tenant) == 20 << 20
        assert host.store.get("acme").public()["child_size_bytes"] == 20 << 20
    finally:
        host.close()
    assert childsize.recorded(config) == 20 << 20

    # Later creates without --max-clients budget a child the larger of it and child_size.
    def derived(child_size, defaults=config):
        return spec.make_spec("shop", "shop.example.test", memory="512M", defaults=defaults,
                              existing_user=lambda name: False,
                              child_size=child_size).max_clients

    assert derived(childsize.recorded(config)) == (512 - 64) // 48
    assert derived(64 << 20) == (512 - 64) // 64
    assert derived(None) == (512 - 64) // 48
    low = dataclasses.replace(config, child_size_bytes=4 << 20)
    assert derived(childsize.recorded(config), low) == (512 - 64) // 20


def test_a_figure_from_another_base_image_or_none_at_all_is_not_used(config):
    assert childsize.recorded(config) is None  # no state file yet: none is made
    assert not config.state_db.exists()
    host = Host(config)
    try:
        host.store.set_setting(childsize.SETTING, json.dumps(
            {"bytes": 20 << 20, "image": "another-image", "at": 0, "tenant": "x"}))
        assert childsize.recorded(config) is None
        key = images.image_key(config.suite, images.package_list(), config.mirror)
        host.store.set_setting(childsize.SETTING, json.dumps(
            {"bytes": 1 << 20, "image": key, "at": 0, "tenant": "x"}))
        assert childsize.recorded(config) == childsize.FLOOR
    finally:
        host.close()


def test_the_per_child_limit_is_the_caps_share_after_the_master():
    assert spec.child_limit_for(512 << 20, 8) == (448 << 20) // 8
    assert spec.child_limit_for(64 << 20, 1) == 0
