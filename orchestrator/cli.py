"""The `orch` command line: parsing, output and exit codes; the work is done elsewhere."""

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from . import __version__, config as config_mod, fragments, spec as spec_mod, tenants
from .errors import BadInput, OrchError
from .progress import Progress

log = logging.getLogger("orchestrator")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is BadInput, so `--json` gets its JSON document too."""

    def error(self, message):
        raise BadInput(message, step="parse", fix=f"see `{self.prog} --help`")


def _parser():
    def flags(target, default):
        # Subcommands take the flags too, with SUPPRESS so they do not reset `orch --json X`.
        target.add_argument("--json", action="store_true", default=default,
                            help="print one JSON document on stdout")
        target.add_argument("-v", "--verbose", action="count",
                            default=0 if default is False else default,
                            help="log steps (-v) or commands too (-vv) on stderr")

    parser = _Parser(
        prog="orch",
        description="An isolated Apache httpd + mod_perl server for every hosting tenant.",
    )
    flags(parser, False)
    parser.add_argument("--version", action="version", version=f"orch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    create = sub.add_parser("create-tenant", help="create and start a tenant")
    flags(create, argparse.SUPPRESS)
    create.add_argument("name")
    create.add_argument("--hostname", required=True, help="the public DNS name of its site")
    create.add_argument("--backend", default="jail", help="isolation kind (default: jail)")
    create.add_argument("--memory", help="memory cap, like 512M or 1G")
    create.add_argument("--max-clients", type=int, help="MaxRequestWorkers of its Apache")

    for name, text in (("delete-tenant", "remove a tenant and everything it had"),
                       ("start", "start a tenant's server"), ("stop", "stop a tenant's server"),
                       ("show", "show one tenant")):
        command = sub.add_parser(name, help=text)
        flags(command, argparse.SUPPRESS)
        command.add_argument("name")
    flags(sub.add_parser("list", help="list the tenants"), argparse.SUPPRESS)

    proxy = sub.add_parser("proxy", help="the front proxy: its status, or stop it")
    flags(proxy, argparse.SUPPRESS)
    proxy.add_argument("action", choices=("status", "stop"))

    config = sub.add_parser("tenant-config", help="apply, show or roll back a tenant's own "
                            "httpd.conf fragment")
    flags(config, argparse.SUPPRESS)
    config.add_argument("name")
    what = config.add_mutually_exclusive_group(required=True)
    what.add_argument("file", nargs="?", help="the new fragment ('-' for standard input)")
    what.add_argument("--show", action="store_true", help="print the live fragment")
    what.add_argument("--rollback", action="store_true", help="go back to the previous one")
    return parser


def _setup_logging(verbosity):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler.setLevel(level)
    log.addHandler(handler)
    log.setLevel(level)


def _print(args, document, text):
    if args.json:
        json.dump(document, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif text:
        print(text)


def _table(rows, columns):
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(str(row.get(c, "")).ljust(w)
                               for c, w in zip(columns, widths, strict=True)))
    return "\n".join(lines)


def _run(args):
    config = config_mod.load()
    spec = None
    if args.command == "create-tenant":
        # Before the state store is opened: bad input leaves nothing on the host.
        spec = spec_mod.make_spec(args.name, args.hostname, args.backend, args.memory,
                                  args.max_clients, defaults=config)
    host = tenants.Host(config)
    try:
        return _dispatch(args, host, spec)
    finally:
        host.close()


def _dispatch(args, host, spec):
    if args.command == "create-tenant":
        progress = Progress(enabled=True)
        tenant = tenants.create(host, spec, progress)
        facts = host.describe(tenant)
        facts["timings"] = progress.timings
        _print(args, facts, f"tenant {tenant.name} is running at {facts['url']} "
               f"(uid {tenant.uid}, port {tenant.port}, address {tenant.address})")
    elif args.command == "delete-tenant":
        deleted = tenants.delete(host, args.name)
        text = f"tenant {args.name} " + ("deleted" if deleted else "did not exist; nothing to do")
        _print(args, {"name": args.name, "deleted": deleted}, text)
    elif args.command in ("start", "stop"):
        action = tenants.start if args.command == "start" else tenants.stop
        tenant = action(host, args.name)
        _print(args, host.describe(tenant), f"tenant {tenant.name} is {tenant.state}")
    elif args.command == "proxy":
        if args.action == "stop":
            host.proxy.stop()
        pid = host.proxy.pid()
        state = f"running (pid {pid})" if pid else "stopped"
        _print(args, {"running": pid is not None, "pid": pid,
                      "address": host.config.proxy_address, "port": host.config.proxy_port},
               f"front proxy on {host.config.proxy_address}:{host.config.proxy_port}: {state}")
    elif args.command == "tenant-config":
        _tenant_config(args, host)
    elif args.command == "show":
        facts = host.describe(host.tenant(args.name))
        _print(args, facts, "\n".join(f"{k:<20} {v}" for k, v in sorted(facts.items())))
    elif args.command == "list":
        rows = [t.public() for t in host.store.tenants()]
        columns = ["name", "backend", "state", "hostname", "uid", "port", "address"]
        _print(args, {"tenants": rows}, _table(rows, columns) if rows else "no tenants")
    return 0


def _interrupt(signum, frame):
    # SIGTERM ends a create the way Ctrl-C does: through its rollback, not around it.
    raise KeyboardInterrupt


def _tenant_config(args, host):
    if args.show:
        result = fragments.show(host, args.name)
        _print(args, result, result["fragment"].rstrip("\n"))
        return
    progress = Progress(enabled=True)
    if args.rollback:
        result = fragments.rollback(host, args.name, progress)
        _print(args, result, f"tenant {args.name}: the previous fragment is live again")
        return
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {args.file}: {exc}", tenant=args.name, step="read",
                       fix="give a readable text file") from None
    result = fragments.apply(host, args.name, text, progress)
    _print(args, result, f"tenant {args.name}: the new fragment is live "
           f"(Apache master pid {result['master_pid']})")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        args = _parser().parse_args(argv)
    except BadInput as exc:
        return _fail(exc, want_json="--json" in argv)
    _setup_logging(args.verbose)
    try:
        return _run(args)
    except OrchError as exc:
        return _fail(exc, args.json)
    except KeyboardInterrupt:
        return _fail(OrchError("interrupted", fix="run the command again; a create that was "
                               "cut short is cleaned up by the next create or delete"),
                     args.json)


def _fail(exc, want_json):
    if want_json:
        json.dump({"error": exc.as_dict()}, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    print(f"orch: {exc}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
