"""The fragment policy against a fake guest root: nothing runs, only files are read."""

import os

import pytest

from orchestrator import httpdconf
from orchestrator.httpdconf import FragmentRefused


@pytest.fixture
def guest(tmp_path):
    root = tmp_path / "root"
    (root / "srv/tenant/conf/sub").mkdir(parents=True)
    (root / "etc/apache2/orch").mkdir(parents=True)
    (root / "etc/apache2/orch/httpd.conf").write_text("Listen 1.2.3.4:5\n")
    (root / "srv/tenant/conf/ok.conf").write_text("AddType text/x .x\n")
    (root / "srv/tenant/conf/sub/deep.conf").write_text("AddType text/y .y\n")
    (root / "srv/tenant/conf/bad.conf").write_text("# fine\n\nUser root\n")
    return root


def check(root, text):
    return httpdconf.PolicyCheck(root, "acme").check(text)


@pytest.mark.parametrize("text", [
    "Listen 80", "LISTEN 80", "  listen 80", "<VirtualHost *>\nUser x\n</VirtualHost>",
    "<IfModule x>\n<Directory />\nGroup y\n</Directory>\n</IfModule>",
    "Pid\\\nFile /x", "LoadModule a b", "LoadFile /x.so", "Mutex default",
    "CoreDumpDirectory /tmp", "ServerRoot /", "MaxRequestWorkers 9", "ServerName x.test",
])
def test_forbidden_directives(guest, text):
    with pytest.raises(FragmentRefused) as caught:
        check(guest, text + "\n")
    assert caught.value.step == "policy" and "line" in caught.value.message


def test_refusal_names_the_right_line(guest):
    with pytest.raises(FragmentRefused, match="line 3: Listen"):
        check(guest, "# c\nAddType a .b\nListen \\\n 80\nAddType c .d\n")


def test_servername_is_allowed_inside_a_virtual_host(guest):
    check(guest, "<VirtualHost *:*>\n  ServerName b.example.test\n</VirtualHost>\n")


def test_perl_sections_are_not_read_as_directives(guest):
    check(guest, "<Perl>\nmy $Listen = 1;\nUser();\n</Perl>\n")


def test_unbalanced_sections(guest):
    with pytest.raises(FragmentRefused, match="never closed"):
        check(guest, "<Location />\n")
    with pytest.raises(FragmentRefused, match="not open"):
        check(guest, "</Location>\n")


def test_includes_inside_the_tree_are_followed(guest):
    files = check(guest, "Include /srv/tenant/conf/ok.conf\nInclude /srv/tenant/conf/sub\n")
    assert files == ["/srv/tenant/conf/ok.conf", "/srv/tenant/conf/sub/deep.conf"]


def test_an_included_file_is_checked_too(guest):
    with pytest.raises(FragmentRefused, match="/srv/tenant/conf/bad.conf, line 3: User"):
        check(guest, "Include /srv/tenant/conf/bad.conf\n")


@pytest.mark.parametrize("text", [
    "Include /etc/apache2/orch/httpd.conf",
    "Include /srv/tenant/../etc/apache2/orch/httpd.conf",
    "Include ../../srv/../etc/passwd",
    "IncludeOptional /etc/*/orch/*.conf",
    "Include /srv/tenant/conf/../../../etc/apache2/orch/httpd.conf",
])
def test_includes_outside_the_tree(guest, text):
    with pytest.raises(FragmentRefused, match="outside"):
        check(guest, text + "\n")


def test_symlinks_are_resolved_inside_the_guest(guest):
    link = guest / "srv/tenant/conf/evil.conf"
    os.symlink("/etc/apache2/orch/httpd.conf", link)  # absolute: the guest's, not the host's
    with pytest.raises(FragmentRefused, match="resolves outside"):
        check(guest, "Include /srv/tenant/conf/evil.conf\n")
    with pytest.raises(FragmentRefused, match="resolves outside"):
        check(guest, "IncludeOptional /srv/tenant/conf/evil*.conf\n")


def test_a_relative_symlink_that_stays_inside_is_fine(guest):
    os.symlink("ok.conf", guest / "srv/tenant/conf/alias.conf")
    assert check(guest, "Include /srv/tenant/conf/alias.conf\n") == ["/srv/tenant/conf/ok.conf"]


def test_include_cycle(guest):
    (guest / "srv/tenant/conf/a.conf").write_text("Include /srv/tenant/conf/b.conf\n")
    (guest / "srv/tenant/conf/b.conf").write_text("Include /srv/tenant/conf/a.conf\n")
    with pytest.raises(FragmentRefused, match="cycle"):
        check(guest, "Include /srv/tenant/conf/a.conf\n")


def test_guest_realpath_never_climbs_out(guest):
    assert httpdconf.guest_realpath(str(guest), "/../../etc") == "/etc"
    os.symlink("../../../../..", guest / "srv/tenant/up")
    assert httpdconf.guest_realpath(str(guest), "/srv/tenant/up/etc") == "/etc"


def test_perl_switches(guest):
    check(guest, "PerlSwitches -I/srv/tenant/lib -I /srv/tenant/more\n")
    with pytest.raises(FragmentRefused, match="outside your tree"):
        check(guest, "PerlSwitches -I/srv/tenant/../etc\n")
    with pytest.raises(FragmentRefused, match="not allowed"):
        check(guest, "PerlSwitches -M0\n")


def test_handler_modules_are_found_for_preloading():
    text = ("PerlResponseHandler Shop::Cart\nPerlFixupHandler Shop::Fix::handler\n"
            "PerlInitHandler Shop::Init->run\nPerlResponseHandler 'sub { 1 }'\n")
    assert httpdconf.handler_modules(text) == ["Shop::Cart", "Shop::Fix", "Shop::Init"]


def test_visible_errors_keep_only_the_tenants_files():
    output = ("AH00526: Syntax error on line 7 of /etc/apache2/orch/httpd.conf:\n"
              "LoadModule secret_module /opt/secret.so\n"
              "AH00526: Syntax error on line 2 of /srv/tenant/conf/x.conf:\n"
              "Invalid command 'Foo'\n")
    kept = httpdconf.visible_errors(output, ["/srv/tenant/conf/x.conf"])
    assert kept == ["AH00526: Syntax error on line 2 of /srv/tenant/conf/x.conf:",
                    "Invalid command 'Foo'"]


def test_a_failed_start_is_blamed_on_the_line_that_loads_the_module():
    text = ("AddType a .b\nPerlModule Shop::Fine\n<Location /x>\n"
            "PerlResponseHandler Shop::Dies\n</Location>\n")
    output = "[perl:error] refusing to compile at /srv/tenant/perl/Shop/Dies.pm line 2."
    assert httpdconf.blame_line(text, output).number == 4
    assert httpdconf.blame_line(text, "Can't locate Shop/Fine.pm in @INC").number == 2
    assert httpdconf.blame_line(text, "something else") is None


@pytest.mark.parametrize("text", [
    '"Listen" 10.0.0.1:81', "'LoadModule' x y", "Define D Listen", "${D} 81",
    "UnDefine X", "IncludeOptional /srv/tenant/${X}/a.conf",
    "PerlRequire /etc/apache2/orch/httpd.conf", "PerlRequire ../orch/httpd.conf",
])
def test_disguised_directives_are_refused(guest, text):
    with pytest.raises(FragmentRefused):
        check(guest, text + "\n")


def test_perl_require_inside_the_tree_is_fine(guest):
    (guest / "srv/tenant/perl").mkdir()
    check(guest, "PerlRequire /srv/tenant/perl/startup.pl\nPerlModule Shop::Cart\n")


def test_globs_never_list_folders_outside_the_tree(guest, tmp_path):
    secret = guest / "etc" / "secret-name.conf"
    secret.write_text("AddType a .b\n")
    os.symlink("/etc", guest / "srv/tenant/conf/etc")
    # Through the link the folder is the guest's /etc: outside, so never listed.
    with pytest.raises(FragmentRefused) as caught:
        check(guest, "IncludeOptional /srv/tenant/conf/e[t]c/*.conf\n")
    assert "secret-name" not in caught.value.message
    with pytest.raises(FragmentRefused) as caught:
        check(guest, "IncludeOptional /srv/tenant/conf/etc/*.conf\n")
    assert "secret-name" not in caught.value.message
    with pytest.raises(FragmentRefused) as caught:
        check(guest, "Include /srv/tenant/conf/etc/secret-name.conf\n")
    assert "outside" in caught.value.message


def test_perl_errors_about_operator_files_are_withheld():
    output = ('[perl:error] syntax error at /etc/apache2/orch/httpd.conf line 9, near "PidFile "\n'
              "[perl:error] Can't locate Shop/X.pm in @INC (@INC contains: /srv/tenant/perl)"
              " at (eval 3) line 1.\n")
    kept = httpdconf.visible_errors(output, [])
    assert len(kept) == 1 and "Can't locate" in kept[0]
