import dataclasses

import pytest

from orchestrator import allocate
from orchestrator.config import Range
from orchestrator.errors import BadInput, CapacityError
from orchestrator.spec import TenantSpec
from orchestrator.state import Store


def free(uid):
    return False


@pytest.fixture
def store(config):
    store = Store(config.state_db)
    yield store
    store.close()


def test_two_tenants_never_share_uid_port_or_address(store, config):
    a = allocate.allocate(store, TenantSpec("a", "a.example.test"), config, free)
    b = allocate.allocate(store, TenantSpec("b", "b.example.test"), config, free)
    assert a.uid != b.uid and a.port != b.port and a.address != b.address
    assert a.host_address != b.host_address and a.link_index != b.link_index
    assert a.state == b.state == "creating"


def test_freed_values_are_handed_out_again(store, config):
    a = allocate.allocate(store, TenantSpec("a", "a.example.test"), config, free)
    store.delete("a")
    again = allocate.allocate(store, TenantSpec("c", "c.example.test"), config, free)
    assert (again.uid, again.port, again.address) == (a.uid, a.port, a.address)


def test_host_uids_are_skipped(store, config):
    taken = config.uid_range.low
    tenant = allocate.allocate(store, TenantSpec("a", "a.example.test"), config,
                               lambda uid: uid == taken)
    assert tenant.uid == taken + 1


def test_address_pair_is_a_slash_31_inside_the_pool(store, config):
    tenant = allocate.allocate(store, TenantSpec("a", "a.example.test"), config, free)
    import ipaddress

    host, guest = ipaddress.IPv4Address(tenant.host_address), ipaddress.IPv4Address(
        tenant.address)
    assert int(guest) == int(host) + 1 and int(host) % 2 == 0
    assert guest in config.address_pool and host != config.address_pool.network_address


def test_exhausted_port_range_is_a_capacity_error(store, config):
    small = dataclasses.replace(config, port_range=Range(20000, 20000))
    allocate.allocate(store, TenantSpec("a", "a.example.test"), small, free)
    with pytest.raises(CapacityError, match="port"):
        allocate.allocate(store, TenantSpec("b", "b.example.test"), small, free)
    assert store.get("b") is None


def test_duplicate_name_and_hostname(store, config):
    allocate.allocate(store, TenantSpec("a", "a.example.test"), config, free)
    with pytest.raises(BadInput, match="already exists"):
        allocate.allocate(store, TenantSpec("a", "z.example.test"), config, free)
    with pytest.raises(BadInput, match="belongs to tenant a"):
        allocate.allocate(store, TenantSpec("b", "a.example.test"), config, free)
