import pytest

from orchestrator import spec
from orchestrator.errors import BadInput


def never_a_user(name):
    return False


@pytest.mark.parametrize("name", ["a", "acme", "shop-42", "a" + "b" * 29, "x1-y2"])
def test_good_names_pass(name):
    spec.check_name(name, never_a_user)


@pytest.mark.parametrize("name", ["", "A", "1a", "-a", "a_b", "a.b", "a b", "a" * 31,
                                  "acme-", "ac--me", "root", "www-data", "admin", "nobody",
                                  "é", "acme\n"])
def test_bad_names_are_refused_with_a_fix(name):
    with pytest.raises(BadInput) as caught:
        spec.check_name(name, never_a_user)
    assert caught.value.exit_code == 2
    assert caught.value.fix and caught.value.step == "validate"


def test_existing_user_is_refused():
    with pytest.raises(BadInput, match="already a user"):
        spec.check_name("postgres", lambda name: name == "postgres")


def test_longest_name_fits_every_derived_limit():
    names = spec.derived_names("a" * 30, 0xFFFFFF)
    assert len(names["link"]) <= 15 and len(names["guest_link"]) <= 15
    assert len(names["unix_user"]) <= 32 and len(names["dns_label"]) <= 63


@pytest.mark.parametrize("host,canonical", [
    ("Shop.Example.COM", "shop.example.com"),
    ("shop.example.com.", "shop.example.com"),
    ("a-b.c-d.example", "a-b.c-d.example"),
])
def test_hostnames_are_made_canonical(host, canonical):
    assert spec.check_hostname(host) == canonical


@pytest.mark.parametrize("host", ["", "shop", "-a.example", "a-.example", "a..example",
                                  "1.2.3.4", "a_b.example", "x" * 64 + ".example",
                                  ".".join(["a" * 60] * 5), "localhost", "a.localhost"])
def test_bad_hostnames_are_refused(host):
    with pytest.raises(BadInput, match="hostname"):
        spec.check_hostname(host)


@pytest.mark.parametrize("text,size", [("512M", 512 << 20), ("1G", 1 << 30), ("2GiB", 2 << 30),
                                       ("64m", 64 << 20), ("1048576", 1 << 20)])
def test_sizes(text, size):
    assert spec.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1G", "1X", "lots"])
def test_bad_sizes(text):
    with pytest.raises(BadInput):
        spec.parse_size(text)


def test_limits(config):
    with pytest.raises(BadInput, match="below"):
        spec.make_spec("acme", "a.example.test", memory="32M", defaults=config,
                       existing_user=never_a_user)
    with pytest.raises(BadInput, match="max-clients"):
        spec.make_spec("acme", "a.example.test", max_clients=0, defaults=config,
                       existing_user=never_a_user)
    made = spec.make_spec("acme", "A.example.test", defaults=config, existing_user=never_a_user)
    assert made.hostname == "a.example.test"
    assert made.memory_limit_bytes == config.default_memory_bytes


def test_workers_follow_from_the_memory_cap(config):
    made = spec.make_spec("acme", "a.example.test", memory="512M", defaults=config,
                          existing_user=never_a_user)
    assert made.max_clients == (512 - 64) // 48
    assert spec.workers_for(64 << 20, 48 << 20) == 1
    assert spec.workers_for(64 << 30, 48 << 20) == spec.MAX_CLIENTS
    given = spec.make_spec("acme", "a.example.test", memory="512M", max_clients=3,
                           defaults=config, existing_user=never_a_user)
    assert given.max_clients == 3
