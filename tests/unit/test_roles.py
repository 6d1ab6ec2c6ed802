"""The apache_modperl role's inputs and the locked part of the httpd.conf it writes."""

from pathlib import Path

import jinja2
import pytest
import yaml

from orchestrator.spec import MASTER_SIZE

ROLE = Path(__file__).resolve().parents[2] / "roles" / "apache_modperl"


def load(relative):
    return yaml.safe_load((ROLE / relative).read_text())


def effective_kb(memory, workers, given=0):
    variables = {**load("defaults/main.yml"), "apache_modperl_memory_limit_bytes": memory,
                 "apache_modperl_max_request_workers": workers,
                 "apache_modperl_size_limit_kb": given}
    expression = load("vars/main.yml")["apache_modperl_size_limit_effective_kb"]
    return int(jinja2.Environment().from_string(expression).render(variables))


def render(**overrides):
    variables = {**load("defaults/main.yml"), **load("vars/main.yml"), **overrides}
    source = (ROLE / "templates" / "httpd.conf.j2").read_text()
    return jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                              keep_trailing_newline=True).from_string(source).render(
        {**variables, "ansible_managed": "managed"})


def test_every_default_is_declared_with_the_same_value():
    defaults = load("defaults/main.yml")
    options = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, value in defaults.items():
        assert name in options, name
        if "default" in options[name]:
            assert options[name]["default"] == value, name
    assert defaults["apache_modperl_master_reserve_bytes"] == MASTER_SIZE


@pytest.mark.parametrize(("memory", "workers", "given", "expected"), [
    (512 << 20, 8, 0, (448 << 20) // 8 // 1024),   # the cap's share per child
    (192 << 20, 2, 0, 64 << 10),
    (512 << 20, 8, 20000, 20000),                  # a limit given wins
    (0, 8, 0, 0),                                  # no memory cap known: no limit
])
def test_the_per_child_limit_is_the_caps_share(memory, workers, given, expected):
    assert effective_kb(memory, workers, given) == expected


def test_the_size_limit_sits_in_the_locked_part_after_the_fragment():
    conf = render(apache_modperl_size_limit_effective_kb="65536")
    include = conf.index("Include /etc/apache2/orch/tenant.conf")
    for line in ("PerlModule OrchSizeLimit",
                 "PerlSetVar OrchSizeLimitFile /etc/apache2/orch/size-limit",
                 "PerlChildInitHandler OrchSizeLimit::child_init",
                 "PerlPostReadRequestHandler OrchSizeLimit::register"):
        assert conf.index(f"\n{line}\n") > include, line
    assert "OrchSizeLimit" not in render(apache_modperl_size_limit_effective_kb="0")
