"""`orch tenant-config` against a real tenant: every refused fragment leaves the same
master process answering as before; a good one goes live without a new master."""

import json
import os
from pathlib import Path

import pytest

from .conftest import in_jail

pytestmark = [pytest.mark.root, pytest.mark.slow]

CART = """package Shop::Cart;
use strict;
use warnings;
use Apache2::RequestRec ();
use Apache2::RequestIO ();
use Apache2::Const -compile => qw(OK);
sub handler {
    my $r = shift;
    $r->content_type('text/plain');
    $r->print("cart uid=$<\\n");
    return Apache2::Const::OK;
}
1;
"""

GOOD = """# a second virtual host, and a handler of the tenant's own
<VirtualHost *:*>
    ServerName shop.example.test
    <Location /cart>
        SetHandler modperl
        PerlResponseHandler Shop::Cart
    </Location>
</VirtualHost>
"""


@pytest.fixture(scope="module")
def shop(orch_module):
    orch_module.create("shop", "shop.example.test")
    facts = orch_module.show("shop")
    write_as_tenant(facts, "/srv/tenant/perl/Shop/Cart.pm", CART)
    write_as_tenant(facts, "/srv/tenant/perl/Shop/Broken.pm",
                    "package Shop::Broken;\nsub handler { my $x = ; }\n1;\n")
    write_as_tenant(facts, "/srv/tenant/perl/Shop/Dies.pm",
                    "package Shop::Dies;\ndie 'refusing to compile';\n1;\n")
    write_as_tenant(facts, "/srv/tenant/conf/a.conf", "Include /srv/tenant/conf/b.conf\n")
    write_as_tenant(facts, "/srv/tenant/conf/b.conf", "Include /srv/tenant/conf/a.conf\n")
    write_as_tenant(facts, "/srv/tenant/conf/ok.conf", "AddType text/x-shop .shop\n")
    in_jail(facts, "ln", "-s", "/etc/apache2/orch/httpd.conf",
            "/srv/tenant/conf/operator.conf").check_returncode()
    in_jail(facts, "mkdir", "-p", "/srv/tenant/conf/links").check_returncode()
    in_jail(facts, "ln", "-s", "/etc/passwd", "/srv/tenant/conf/links/x.conf").check_returncode()
    return orch_module


def write_as_tenant(facts, path, text):
    in_jail(facts, "mkdir", "-p", os.path.dirname(path)).check_returncode()
    done = in_jail(facts, "sh", "-c", f"cat > {path}", input_text=text)
    done.check_returncode()


def apply(orch, text, tmp_path):
    fragment = tmp_path / "fragment.conf"
    fragment.write_text(text)
    done = orch.run("tenant-config", "shop", str(fragment), "--json", check=False)
    return done.returncode, json.loads(done.stdout), done.stderr


def unchanged(orch, master):
    facts = orch.show("shop")
    assert facts["master_pid"] == master
    status, body, _ = orch.get("shop.example.test")
    assert status == 200 and "hello from tenant shop:" in body


REFUSED_DIRECTIVES = [
    "Listen 8080",
    "listen 10.0.0.1:80",
    "<VirtualHost *:80>\n  LISTEN 9090\n</VirtualHost>",
    "<IfModule mod_perl.c>\n  User root\n</IfModule>",
    "<IfDefine FOO>\nGroup root\n</IfDefine>",
    "<Directory /srv/tenant>\n  ServerRoot /tmp\n</Directory>",
    "<Location />\n  PidFile /tmp/x.pid\n</Location>",
    "LoadModule cgi_module /usr/lib/apache2/modules/mod_cgi.so",
    "<IfModule !mod_cgi.c>\n  loadmodule cgi_module /x/mod_cgi.so\n</IfModule>",
    "LoadFile /usr/lib/x86_64-linux-gnu/libz.so.1",
    "CoreDumpDirectory /tmp",
    "Mutex file:/tmp default",
    "MaxRequestWorkers 500",
    "ServerLimit 1000",
    "ServerName evil.example.test",
    "Server\\\nRoot /tmp",
    "Lis\\\nten 81",
    "ErrorLog /srv/tenant/logs/mine.log",
]


@pytest.mark.parametrize("text", REFUSED_DIRECTIVES)
def test_refused_directives(shop, tmp_path, text):
    master = shop.show("shop")["master_pid"]
    code, doc, _ = apply(shop, text + "\n", tmp_path)
    assert code == 2
    assert doc["error"]["step"] == "policy"
    assert "line " in doc["error"]["message"]
    unchanged(shop, master)


@pytest.mark.parametrize("text,reason", [
    ("Include /etc/apache2/orch/httpd.conf", "outside /srv/tenant"),
    ("Include /srv/tenant/../../etc/passwd", "outside /srv/tenant"),
    ("Include ../../etc/passwd", "outside /srv/tenant"),
    ("IncludeOptional /etc/apache2/*.conf", "outside /srv/tenant"),
    ("Include /srv/tenant/conf/links/*.conf", "resolves outside"),
    ("Include /srv/tenant/conf/operator.conf", "resolves outside"),
    ("Include /srv/tenant/conf/a.conf", "cycle"),
    ("Include /srv/tenant/conf/missing.conf", "no such file"),
])
def test_refused_includes(shop, tmp_path, text, reason):
    master = shop.show("shop")["master_pid"]
    code, doc, _ = apply(shop, text + "\n", tmp_path)
    assert code == 2 and reason in doc["error"]["message"], doc
    unchanged(shop, master)


@pytest.mark.parametrize("text,step,shows", [
    ("NoSuchDirective on", "syntax", "Invalid command 'NoSuchDirective'"),
    ("<Location /x>\n  SetHandler\n</Location>", "syntax", "line 2 of your fragment"),
    ("PerlModule No::Such::Module", "trial", "Can't locate No/Such/Module.pm"),
    ("PerlModule Shop::Broken", "trial", "syntax error at /srv/tenant/perl/Shop/Broken.pm"),
    ("<Location /d>\n  SetHandler modperl\n  PerlResponseHandler Shop::Dies\n</Location>",
     "trial", "refusing to compile"),
])
def test_faults_found_by_apache(shop, tmp_path, text, step, shows):
    master = shop.show("shop")["master_pid"]
    code, doc, _ = apply(shop, text + "\n", tmp_path)
    assert code == 2 and doc["error"]["step"] == step, doc
    assert shows in doc["error"]["message"]
    message = doc["error"]["message"]
    assert "your fragment, line " in message or " of your fragment:" in message  # the line
    unchanged(shop, master)


def test_apache_errors_never_show_operator_files(shop, tmp_path):
    # The main file is readable by the tenant's Apache; a fragment that makes Apache
    # complain about it must not get its lines echoed back.
    master = shop.show("shop")["master_pid"]
    code, doc, _ = apply(shop, "Define x\n<IfDefine x>\n</IfDefine>\nAddType\n", tmp_path)
    assert code == 2
    assert "LoadModule" not in doc["error"]["message"]
    assert "/etc/apache2/orch/httpd.conf" not in doc["error"]["message"]
    unchanged(shop, master)


def test_good_fragment_goes_live_without_a_new_master(shop, tmp_path):
    master = shop.show("shop")["master_pid"]
    code, doc, stderr = apply(shop, GOOD + "Include /srv/tenant/conf/ok.conf\n", tmp_path)
    assert code == 0, stderr
    assert doc["master_pid"] == master

    status, body, _ = shop.get("shop.example.test", "/cart")
    assert status == 200 and f"cart uid={shop.show('shop')['uid']}" in body
    assert shop.get("shop.example.test")[0] == 200
    shown = json.loads(shop.run("tenant-config", "shop", "--show", "--json").stdout)
    assert shown["fragment"].startswith("# a second virtual host")

    # A bad fragment now is refused and the good one keeps serving.
    code, _, _ = apply(shop, "Listen 1234\n", tmp_path)
    assert code == 2
    assert shop.get("shop.example.test", "/cart")[0] == 200

    # Rollback returns to the fragment before the good one: /cart is gone again.
    shop.run("tenant-config", "shop", "--rollback")
    assert shop.get("shop.example.test", "/cart")[0] == 404
    assert shop.show("shop")["master_pid"] == master


def test_no_trial_process_is_left(shop, tmp_path):
    apply(shop, "PerlModule No::Such::Module\n", tmp_path)
    apply(shop, "AddType text/x-a .a\n", tmp_path)
    master = shop.show("shop")["master_pid"]
    for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        assert b"trial.conf" not in cmdline

