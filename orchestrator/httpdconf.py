"""Checks a tenant's own httpd.conf fragment before it goes live.

Three checks, in order, each one a reason to refuse:

1. Policy, by reading the fragment (and every file it includes) here: no directive that
   would change the locked part of the configuration or load code the operator did not
   choose, in any section and any letter case, across line continuations; includes only
   of files inside the tenant's own tree, after resolving `..`, globs and symbolic links
   inside the guest's root; no include cycles.
2. Syntax, by Apache itself (`apache2 -t`), inside the guest, as the tenant.
3. A trial start of the whole candidate configuration on a scratch port inside the guest,
   as the tenant and under its limits, which must answer HTTP before the switch.

Apache's own messages are passed on only where they speak of the tenant's own files:
Apache echoes lines of files it cannot parse, and those could be the operator's.
"""

import dataclasses
import fnmatch
import glob
import os
import posixpath
import re

from .errors import BadInput

#: Directives a fragment may not contain anywhere: the reason, and what to do instead.
_LOCKED = ("is set by the operator", "remove it; orch sets it for every tenant")
_LIMIT = ("is a worker or resource limit", "remove it; ask the operator to resize the tenant")
_CODE = ("would load code the operator did not choose",
         "remove it; use PerlModule for your own Perl code")
_LOGS = ("would move the logs the operator keeps",
         "remove it; your logs are in /var/log/apache2 inside your guest")
FORBIDDEN = {
    **dict.fromkeys(("listen", "user", "group", "serverroot", "pidfile",
                     "defaultruntimedir", "scoreboardfile", "coredumpdirectory", "mutex",
                     "servername", "usecanonicalname", "usecanonicalphysicalport"), _LOCKED),
    **dict.fromkeys(("serverlimit", "maxrequestworkers", "maxclients", "threadlimit",
                     "threadsperchild", "maxconnectionsperchild", "maxrequestsperchild",
                     "rlimitmem", "rlimitcpu", "rlimitnproc"), _LIMIT),
    **dict.fromkeys(("loadmodule", "loadfile"), _CODE),
    **dict.fromkeys(("errorlog", "customlog", "transferlog", "globallog", "bufferedlogs",
                     "errorlogformat"), _LOGS),
}
INCLUDES = ("include", "includeoptional")
#: Allowed inside <VirtualHost>, where they name that virtual host, and nowhere else.
VHOST_ONLY = ("servername",)

TENANT_HOME = "/srv/tenant"
MAX_INCLUDE_DEPTH = 16
MAX_INCLUDED_FILES = 64
PATH_LOADERS = ("perlrequire", "perlpostconfigrequire")


@dataclasses.dataclass(frozen=True)
class Line:
    """One logical line of a config file: continuations joined, with where it started."""

    path: str
    number: int
    text: str


class FragmentRefused(BadInput):
    """The fragment failed a check; the running server has not been touched."""


def logical_lines(text, path):
    """Join backslash continuations and drop comments and blank lines."""
    lines = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]  # Apache joins the next line as it is, with no space
            continue
        joined = (pending + raw).strip()
        pending = ""
        if joined and not joined.startswith("#"):
            lines.append(Line(path, start, joined))
    if pending.strip():
        lines.append(Line(path, start, pending.strip()))
    return lines


def directive(line):
    """The directive's name in lowercase, and its arguments; sections are `<name`.

    Apache takes a quoted first word as the directive's name too (`"Listen" 80`).
    """
    match = re.match(r"(</?[^\s>]+|[^\s]+)\s*(.*)", line.text)
    name, rest = match.group(1), match.group(2)
    if len(name) > 1 and name[0] == name[-1] and name[0] in "\"'":
        name = name[1:-1]
    if name.startswith("<"):
        return name.lower(), rest.rstrip(">").strip()
    return name.lower(), rest


def _arguments(rest):
    """Split directive arguments the way Apache does: whitespace, double quotes kept whole."""
    return [a[1:-1] if a.startswith('"') and a.endswith('"') and len(a) > 1 else a
            for a in re.findall(r'"[^"]*"|\S+', rest)]


def guest_realpath(root, path):
    """Resolve `path` inside the guest whose root is `root`, following symlinks there.

    Absolute link targets are taken from the guest's root, never the host's; `..` never
    climbs above it.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    resolved = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


def inside(path, tree=TENANT_HOME):
    return path == tree or path.startswith(tree.rstrip("/") + "/")


class PolicyCheck:
    """Reads a fragment and everything it includes, inside one guest root."""

    def __init__(self, guest_root, tenant, tree=TENANT_HOME, server_root="/etc/apache2",
                 reader=None):
        """`reader(guest_path)` returns a file's text; give one that reads as the tenant.

        Paths are resolved here, from the host; contents are read through `reader`, so a
        symbolic link the tenant swaps in after the check can only reach what the tenant
        itself may read. Without one, files are read from the host (for tests).
        """
        self.root = str(guest_root)
        self.tenant = tenant
        self.tree = tree
        self.server_root = server_root
        self.reader = reader or self._read_from_host
        self.files = []

    def _read_from_host(self, guest_path):
        with open(os.path.join(self.root, guest_path.lstrip("/")), errors="replace") as handle:
            return handle.read()

    def refuse(self, line, message, fix):
        where = "your fragment" if line.path == "<fragment>" else line.path
        raise FragmentRefused(
            f"{where}, line {line.number}: {message}", tenant=self.tenant, step="policy",
            fix=fix,
        )

    def check(self, text):
        """Check the fragment's text; return the guest paths of every file it includes."""
        self._check_text(text, "<fragment>", stack=[])
        return self.files

    def _check_text(self, text, path, stack):
        sections = []
        for line in logical_lines(text, path):
            name, rest = directive(line)
            bare = name.lstrip("</")
            if sections and sections[-1] == "perl" and name != "</perl":
                continue  # Perl code, run as the tenant: nothing here is a directive
            if name.startswith("</"):
                if not sections or sections[-1] != bare:
                    self.refuse(line, f"{line.text} closes a section that is not open",
                                "match every <Section> with its </Section>")
                sections.pop()
                continue
            if name.startswith("<"):
                sections.append(bare)
            if bare in VHOST_ONLY and "virtualhost" in sections:
                continue
            if "${" in line.text or bare in ("define", "undefine"):
                self.refuse(line, "variables (Define, ${...}) are not allowed in a fragment",
                            "write the values out; a variable could hide a locked directive")
            if bare in PATH_LOADERS:
                self._check_perl_path(line, rest)
            if bare in FORBIDDEN:
                shown = re.match(r"<?/?([^\s>]+)", line.text).group(1)
                reason, fix = FORBIDDEN[bare]
                self.refuse(line, f"{shown} {reason}", fix)
            if bare == "perlswitches":
                self._check_perl_switches(line, rest)
            if bare in INCLUDES and not name.startswith("<"):
                self._check_include(line, rest, optional=bare == "includeoptional",
                                    stack=stack)
        if sections:
            raise FragmentRefused(
                f"{'your fragment' if path == '<fragment>' else path}: <{sections[-1]}> is "
                "never closed", tenant=self.tenant, step="policy",
                fix=f"add </{sections[-1]}>",
            )

    def _check_perl_path(self, line, rest):
        for arg in _arguments(rest):
            if "/" in arg and not inside(guest_realpath(self.root, posixpath.join(
                    self.server_root, arg)), self.tree):
                self.refuse(line, f"{arg} is outside your tree",
                            f"keep the files Perl reads under {self.tree}")

    def _check_perl_switches(self, line, rest):
        args = iter(_arguments(rest))
        for arg in args:
            if arg == "-I":
                directory = next(args, "")
            elif arg.startswith("-I"):
                directory = arg[2:]
            else:
                self.refuse(line, f"PerlSwitches {arg} is not allowed",
                            f"only -I with a folder inside {self.tree} may be given")
            if not directory or not inside(posixpath.normpath(directory), self.tree):
                self.refuse(line, f"PerlSwitches -I{directory} is outside your tree",
                            f"keep your Perl modules under {self.tree}")

    def _check_include(self, line, rest, optional, stack):
        args = _arguments(rest)
        if len(args) != 1:
            self.refuse(line, "Include takes one path", "give one file, folder or glob")
        pattern = args[0]
        if not pattern.startswith("/"):
            pattern = posixpath.join(self.server_root, pattern)
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        static = literal if literal.endswith("/") else posixpath.dirname(literal)
        if not inside(guest_realpath(self.root, static or "/"), self.tree):
            self.refuse(line, f"Include {args[0]} names a file outside {self.tree}",
                        f"include only files under {self.tree}")
        matches = self._guest_glob(line, pattern)
        if not matches and not optional and not glob.has_magic(pattern):
            self.refuse(line, f"Include {args[0]}: no such file",
                        "create it first or use IncludeOptional")
        for match in matches:
            self._include_path(line, match, stack)

    def _guest_glob(self, line, pattern):
        """Guest paths matching `pattern`, every folder resolved inside the guest first.

        The host's own glob would follow the tenant's symbolic links on the host, as root,
        and the names it found would then show in the refusal.
        """
        found = ["/"]
        for part in [p for p in pattern.split("/") if p]:
            step = []
            for folder in found:
                real = guest_realpath(self.root, folder)
                if not inside(real, self.tree) and glob.has_magic(part):
                    # Apache would expand it there: refuse, and list nothing outside.
                    self.refuse(line, f"Include {pattern} reaches outside {self.tree}",
                                f"include only files under {self.tree}")
                host_dir = os.path.join(self.root, real.lstrip("/"))
                if glob.has_magic(part):
                    try:
                        names = sorted(os.listdir(host_dir))
                    except OSError:
                        continue
                    step += [posixpath.join(real, n) for n in fnmatch.filter(names, part)
                             if not n.startswith(".")]
                elif os.path.lexists(os.path.join(host_dir, part)):
                    step.append(posixpath.join(real, part))
            found = step
        return found

    def _include_path(self, line, guest_path, stack):
        real = guest_realpath(self.root, guest_path)
        if not inside(real, self.tree):
            self.refuse(line, f"Include reaches {guest_path}, which resolves outside "
                        f"{self.tree}", f"include only files under {self.tree}")
        if real in stack:
            self.refuse(line, f"Include of {guest_path} makes a cycle",
                        "a file may not include itself, directly or through others")
        if len(stack) >= MAX_INCLUDE_DEPTH:
            self.refuse(line, "includes nest too deep", "flatten your includes")
        if len(self.files) >= MAX_INCLUDED_FILES:
            self.refuse(line, f"more than {MAX_INCLUDED_FILES} files are included",
                        "put your configuration in fewer files")
        host_path = os.path.join(self.root, real.lstrip("/"))
        if os.path.isdir(host_path):
            for entry in sorted(os.listdir(host_path)):
                self._include_path(line, posixpath.join(real, entry), stack + [real])
            return
        try:
            text = self.reader(real)
        except OSError as exc:
            self.refuse(line, f"Include {guest_path}: {exc.strerror or exc}", "fix the path")
        self.files.append(real)
        self._check_text(text, real, stack + [real])


def handler_modules(text):
    """Perl modules named by Perl*Handler directives, so a trial start can load them."""
    modules = []
    for line in logical_lines(text, "<fragment>"):
        name, rest = directive(line)
        if name.startswith("perl") and name.endswith("handler"):
            for handler in _arguments(rest):
                module = re.sub(r"(->\w+|::handler)$", "", handler)
                if re.fullmatch(r"[A-Za-z_]\w*(::\w+)*", module) and module not in modules:
                    modules.append(module)
    return modules


PERL_LOADERS = ("perlmodule", "perlrequire", "perlloadmodule", "perlpostconfigrequire")


def blame_line(text, output):
    """The fragment line whose Perl module a failed start complains of, or None."""
    candidates = []
    for line in logical_lines(text, "<fragment>"):
        name, rest = directive(line)
        if name in PERL_LOADERS or (name.startswith("perl") and name.endswith("handler")):
            for arg in _arguments(rest):
                module = re.sub(r"(->\w+|::handler)$", "", arg)
                candidates.append((line, module))
    for line, module in candidates:
        as_path = module.replace("::", "/") + ".pm"
        if as_path in output or re.search(rf"\b{re.escape(module)}\b", output):
            return line
    return candidates[0][0] if len(candidates) == 1 else None


def visible_errors(output, allowed_files):
    """Apache's messages, keeping only those about the tenant's own files."""
    kept = []
    lines = output.splitlines()
    for index, text in enumerate(lines):
        match = re.search(r"line (\d+) of (\S+?):", text)
        if match:
            if any(match.group(2) == path for path in allowed_files):
                kept.append(text)
                if index + 1 < len(lines):
                    kept.append(lines[index + 1])
            continue
        files = re.findall(r" at (/\S+?)(?: line \d+|,|\.|$)", text)
        if files and not all(f in allowed_files or inside(f) for f in files):
            continue  # Perl quotes the file it was reading: keep only the tenant's own
        if any(path in text for path in allowed_files) or re.search(
            r"Can't locate|compilation failed|Compilation failed|syntax error|BEGIN failed",
            text,
        ):
            kept.append(text)
    return kept
