"""The `orch` command line: parsing, output and exit codes; the work is done elsewhere."""

import argparse
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path

from . import (
    __version__,
    boot,
    capacity,
    childsize,
    config as config_mod,
    fragments,
    metering,
    reprovision,
    rollout,
    schedule,
    spec as spec_mod,
    systemd,
    tenants,
)
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
        if name == "stop":
            command.add_argument("--keep-state", action="store_true",
                                 help="for a host shutdown: `orch boot` starts it again")
    flags(sub.add_parser("boot", help="start every autostart tenant, then the front proxy"),
          argparse.SUPPRESS)
    flags(sub.add_parser("reconcile", help="compare state with the host and repair"),
          argparse.SUPPRESS)
    units = sub.add_parser("systemd-units", help="write systemd units for this state directory")
    flags(units, argparse.SUPPRESS)
    units.add_argument("--dir", default="/etc/systemd/system")

    plan = sub.add_parser("schedule", help="cron expressions for reprovisioning and metering")
    flags(plan, argparse.SUPPRESS)
    plan_sub = plan.add_subparsers(dest="schedule_command", required=True, metavar="ACTION",
                                   parser_class=_Parser)
    plan_set = plan_sub.add_parser("set", help="keep a cron expression for a job")
    flags(plan_set, argparse.SUPPRESS)
    plan_set.add_argument("cron", help="five fields, like '30 3 * * *'")
    plan_set.add_argument("--job", default="reprovision", help="reprovision (default) or meter")
    plan_clear = plan_sub.add_parser("clear", help="forget a job's schedule")
    flags(plan_clear, argparse.SUPPRESS)
    plan_clear.add_argument("job")
    flags(plan_sub.add_parser("show", help="each job's expression, last and next run"),
          argparse.SUPPRESS)
    runner = sub.add_parser("scheduler", help="run scheduled jobs in the foreground")
    flags(runner, argparse.SUPPRESS)
    runner.add_argument("--once", action="store_true", help="run what is due now, then exit")
    runner.add_argument("--at", help="with --once: the time to take as now (ISO 8601)")
    flags(sub.add_parser("list", help="list the tenants"), argparse.SUPPRESS)

    again = sub.add_parser("reprovision", help="converge tenants to the roles again "
                           "(--check: report the drift only)")
    flags(again, argparse.SUPPRESS)
    again.add_argument("name", nargs="?")
    again.add_argument("--all", action="store_true", help="every tenant")
    again.add_argument("--check", action="store_true", help="report drift; change nothing")
    again.add_argument("--image", metavar="ID", help="move the tenants onto this base image "
                       "(`current`, or an id from `orch image list`), one at a time")

    image = sub.add_parser("image", help="base images: rebuild, list, prune")
    flags(image, argparse.SUPPRESS)
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="ACTION",
                                     parser_class=_Parser)
    for name, text in (("rebuild", "build a new base image and make it current"),
                       ("list", "every base image and the tenants that use it"),
                       ("prune", "remove the base images no tenant uses")):
        flags(image_sub.add_parser(name, help=text), argparse.SUPPRESS)

    resize = sub.add_parser("resize", help="change a tenant's memory cap or worker count")
    flags(resize, argparse.SUPPRESS)
    resize.add_argument("name")
    resize.add_argument("--memory")
    resize.add_argument("--max-clients", type=int)

    meter = sub.add_parser("meter", help="usage samples for billing")
    flags(meter, argparse.SUPPRESS)
    meter_sub = meter.add_subparsers(dest="meter_command", required=True, metavar="ACTION",
                                     parser_class=_Parser)
    flags(meter_sub.add_parser("sample", help="record every running tenant's usage now"),
          argparse.SUPPRESS)
    report = meter_sub.add_parser("report", help="average, peak and charge per tenant")
    flags(report, argparse.SUPPRESS)
    report.add_argument("--from", dest="start", help="ISO 8601 time (default: 24 h ago)")
    report.add_argument("--to", dest="end", help="ISO 8601 time (default: now)")
    report.add_argument("--price-per-gb-hour", type=float)
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    flags(meter_sub.add_parser("export", help="the latest samples in Prometheus' format"),
          argparse.SUPPRESS)

    room = sub.add_parser("capacity", help="host memory, promises, use, and room left")
    flags(room, argparse.SUPPRESS)
    room.add_argument("--size", help="how many more tenants of this size fit (default: "
                      "the default --memory)")

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
    what.add_argument("--rollback", action="store_true",
                      help="go back to the newest earlier one that passes the checks")
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
                                  args.max_clients, defaults=config,
                                  child_size=childsize.recorded(config))
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
    elif args.command == "start":
        tenant = tenants.start(host, args.name)
        _print(args, host.describe(tenant), f"tenant {tenant.name} is {tenant.state}")
    elif args.command == "stop":
        tenant = tenants.stop(host, args.name, keep_state=args.keep_state)
        _print(args, host.describe(tenant), f"tenant {tenant.name} is stopped")
    elif args.command == "boot":
        results = boot.boot(host)
        _print(args, {"tenants": results},
               _table(results, ["name", "result", "detail"]) if results else "no tenants")
        return 1 if any(r["result"] == "failed" for r in results) else 0
    elif args.command == "reconcile":
        reports = boot.reconcile(host)
        rows = [{"name": r["name"], "found": "; ".join(r["found"]) or "in line",
                 "done": "; ".join(r["done"])} for r in reports]
        _print(args, {"tenants": reports},
               _table(rows, ["name", "found", "done"]) if rows else "no tenants")
        # Something found that could not be put right, or that needs the operator.
        return 1 if any(d.startswith(("could not repair", "none;")) for r in reports
                        for d in r["done"]) else 0
    elif args.command == "systemd-units":
        target = Path(args.dir)
        if not args.dir or not target.is_absolute() or (target.exists() and not target.is_dir()):
            raise BadInput(f"--dir {args.dir!r} is not a folder's absolute path",
                           step="parse", fix="give a folder like /etc/systemd/system")
        written = systemd.write(args.dir, host.config, host.store.tenants())
        _print(args, {"dir": args.dir, "files": written},
               "\n".join(f"{args.dir}/{name}" for name in written))
    elif args.command == "resize":
        if args.memory is None and args.max_clients is None:
            raise BadInput("give --memory, --max-clients or both", tenant=args.name,
                           step="parse", fix=f"orch resize {args.name} --memory 1G")
        tenant = tenants.resize(host, args.name, args.memory, args.max_clients)
        _print(args, host.describe(tenant), f"tenant {tenant.name}: memory "
               f"{tenant.memory_limit_bytes >> 20} MiB, max clients {tenant.max_clients}")
    elif args.command == "meter":
        return _meter(args, host)
    elif args.command == "capacity":
        return _capacity(args, host)
    elif args.command == "schedule":
        return _schedule(args, host)
    elif args.command == "scheduler":
        if args.once:
            now = metering.parse_time(args.at, time.time())
            results = schedule.run_due(host, now)
            _print(args, {"ran": results}, "\n".join(f"{r['job']}: {r['outcome']}"
                                                      for r in results) or "nothing was due")
            return 0 if all(r["ok"] for r in results) else 1
        schedule.run_forever(host)
    elif args.command == "reprovision":
        if args.image is not None:
            return _move(args, host)
        return _reprovision(args, host)
    elif args.command == "image":
        return _image(args, host)
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


def _meter(args, host):
    if args.meter_command == "sample":
        taken = metering.sample(host)
        _print(args, {"samples": taken}, f"sampled {len(taken)} tenant(s)")
    elif args.meter_command == "export":
        text = metering.export(host)
        if args.json:
            _print(args, {"format": "prometheus", "text": text}, None)
        else:
            sys.stdout.write(text)
    else:
        price = args.price_per_gb_hour
        if price is not None and not (math.isfinite(price) and price >= 0):
            raise BadInput(f"--price-per-gb-hour {price} is not a price", step="parse",
                           fix="give a number of 0 or more")
        now = time.time()
        start = metering.parse_time(args.start, now - 86400)
        end = metering.parse_time(args.end, now)
        rows = metering.report(host, start, end, args.price_per_gb_hour)
        if args.json or args.format == "json":
            args.json = True
            _print(args, {"from": start, "to": end, "tenants": rows}, None)
        elif args.format == "csv":
            sys.stdout.write(metering.as_csv(rows))
        else:
            shown = [{**r, "memory_avg": f"{r['memory_avg_bytes'] / 2**20:.1f}M",
                      "without_cache": f"{r['memory_avg_without_cache_bytes'] / 2**20:.1f}M",
                      "peak": f"{r['memory_peak_bytes'] / 2**20:.1f}M",
                      "deleted": _utc(r["deleted_at"]) if r["deleted_at"] else ""}
                     for r in rows]
            columns = ["name", "samples", "memory_avg", "without_cache", "peak",
                       "cpu_seconds", "gib_hours"] + (["charge"] if
                                                      args.price_per_gb_hour is not None else [])
            if any(r["deleted_at"] for r in rows):
                columns.append("deleted")
            print(_table(shown, columns) if rows else "no samples in that period")
    return 0


def _utc(at):
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def _capacity(args, host):
    size = spec_mod.parse_size(args.size) if args.size is not None else None
    if size is not None and size < spec_mod.MIN_MEMORY:
        raise BadInput(f"--size {args.size} is below the {spec_mod.MIN_MEMORY >> 20}M a "
                       "tenant needs", step="parse", fix="give --size 64M or more")
    running = [t for t in host.store.tenants() if t.state == "running"]
    usages = {t.name: host.backend(t.backend).usage(t) for t in running}
    room = capacity.summary(host.config, host.store.tenants(), usages, size)
    mib = 1 << 20
    text = "\n".join([
        f"host memory      {room['host_memory_bytes'] // mib:>8} MiB",
        f"kept for host    {room['reserved_bytes'] // mib:>8} MiB",
        f"budget           {room['budget_bytes'] // mib:>8} MiB (overcommit "
        f"{room['overcommit']})",
        f"promised         {room['promised_bytes'] // mib:>8} MiB to {room['tenants']} tenant(s)",
        f"in use           {room['used_bytes'] // mib:>8} MiB",
        f"room for         {room['fit']:>8} more tenant(s) of {room['size_bytes'] // mib} MiB",
    ])
    _print(args, room, text)
    return 0


def _schedule(args, host):
    if args.schedule_command == "set":
        schedule.set_schedule(host, args.job, args.cron)
    elif args.schedule_command == "clear":
        schedule.clear(host, args.job)
    rows = schedule.show(host)
    shown = [{**r, "next_run": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["next_run"]))}
             for r in rows]
    _print(args, {"jobs": rows},
           _table(shown, ["job", "cron", "next_run"]) if rows else "no job is scheduled")
    return 0


def _reprovision(args, host):
    names = reprovision.names_for(host, args.name, args.all)
    reports = reprovision.reprovision(host, names, check=args.check,
                                      progress=Progress(enabled=True))
    rows = []
    for report in reports:
        if report["failure"]:
            result = "failed"
        elif args.check:
            result = "drift" if report["changed"] or report["drift"] else "in line"
        else:
            result = "changed" if report["changed"] or report["actions"] else "unchanged"
        notes = report["failure"] or "; ".join(report["drift"] + report["actions"]
                                               + report["changed"])
        rows.append({"name": report["name"], "result": result,
                     "changed": len(report["changed"]), "notes": notes})
    lines = [_table(rows, ["name", "result", "changed", "notes"]) if rows else "no tenants"]
    if args.check:
        for report in reports:
            for diff in report["diffs"]:
                lines.append(f"--- {report['name']}: {diff['task']}\n{diff['diff'].rstrip()}")
    _print(args, {"check": args.check, "tenants": reports}, "\n".join(lines))
    return 1 if any(r["failure"] for r in reports) else 0


def _move(args, host):
    if args.check:
        raise BadInput("--check and --image cannot be combined", step="parse",
                       fix="`orch reprovision --all --check` reports drift; `--image` moves")
    names = reprovision.names_for(host, args.name, args.all)
    reports = rollout.move(host, names, args.image, progress=Progress(enabled=True))
    rows = []
    for report in reports:
        if report["failure"]:
            result = "failed"
        elif report["image_from"] == report["image_to"]:
            result = "unchanged"
        else:
            result = "moved"
        rows.append({"name": report["name"], "result": result,
                     "image": report["image"] or "", "changed": len(report["changed"]),
                     "notes": report["failure"] or "; ".join(report["actions"])})
    text = _table(rows, ["name", "result", "image", "changed", "notes"]) if rows else \
        "no tenants"
    _print(args, {"image": reports[0]["image_to"] if reports else None, "tenants": reports},
           text)
    return 1 if any(r["failure"] for r in reports) else 0


def _image(args, host):
    if args.image_command == "rebuild":
        progress = Progress(enabled=True)
        with progress.step("image"):
            entry = rollout.rebuild(host, progress=progress.detail)
        _print(args, entry, f"base image {entry['id']} is built and current; move tenants "
               "onto it with `orch reprovision --all --image current`")
    elif args.image_command == "list":
        rows = rollout.listing(host)
        shown = [{**r, "current": "yes" if r["current"] else "",
                  "built": time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["built_at"])),
                  "tenants": ", ".join(r["tenants"]) or "-"} for r in rows]
        _print(args, {"images": rows},
               _table(shown, ["id", "current", "built", "tenants"]) if rows else
               "no base image is built")
    else:
        removed, kept = rollout.prune(host)
        lines = [f"removed {image_id}" for image_id in removed]
        lines += [f"kept {k['id']}: {k['reason']}" for k in kept]
        _print(args, {"removed": removed, "kept": kept}, "\n".join(lines))
    return 0


def _tenant_config(args, host):
    if args.show:
        result = fragments.show(host, args.name)
        _print(args, result, result["fragment"].rstrip("\n"))
        return
    progress = Progress(enabled=True)
    if args.rollback:
        result = fragments.rollback(host, args.name, progress)
        lines = [f"skipped history entry {s['entry']} ({s['step']}): {s['reason']}"
                 for s in result["skipped"]]
        lines.append(f"tenant {args.name}: history entry {result['entry']} is live again")
        _print(args, result, "\n".join(lines))
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
    except BrokenPipeError:  # the reader of our output went away (`| head`)
        return 0
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
