"""Start one program as the first process of a jail, then get out of its way.

Run as root by the jail backend:

    python -m orchestrator.backends.jail_launch --root DIR --netns FILE --uid U --gid G
        [--cgroup-procs FILE ...] [--hostname NAME] [--proc] -- PROGRAM ARGS...

The process joins the tenant's cgroups and network namespace, makes new mount, UTS, IPC
and PID namespaces, and forks. The child is PID 1 of the new PID namespace: it mounts its
own /proc inside the root, chroots, drops the capability bounding set and every group,
takes the tenant's uid and gid, sets no_new_privs and execs PROGRAM. The parent prints the
child's host pid and exits, so no process of the tenant is left running as root.

Only the standard library is used here: this module starts once per guest start.
"""

import argparse
import ctypes
import os
import resource
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CAP_LAST_POSSIBLE = 63

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags):
    _check(
        _libc.mount(
            source.encode() if source else None, target.encode(),
            fstype.encode() if fstype else None, ctypes.c_ulong(flags), None,
        ),
        f"mount {target}",
    )


def _drop_privileges(uid, gid):
    for cap in range(CAP_LAST_POSSIBLE + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL: past the kernel's last capability
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if os.getuid() == 0 or os.geteuid() == 0:
        raise OSError("uid is still 0 after setresuid")


def _first_process(args):
    os.dup2(2, 1)  # the program's output goes to the console log, not to the pid pipe
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if args.proc:
        _mount("proc", os.path.join(args.root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if args.hostname:
        name = args.hostname.encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    os.chroot(args.root)
    os.chdir("/")
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    _drop_privileges(args.uid, args.gid)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    os.execv(args.program[0], args.program)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="jail_launch")
    parser.add_argument("--root", required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--cgroup-procs", nargs="*", default=[])
    parser.add_argument("--hostname")
    parser.add_argument("--proc", action="store_true", help="mount a /proc of its own")
    parser.add_argument("--nofile", type=int, help="cap on open files (RLIMIT_NOFILE)")
    parser.add_argument("program", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.program[:1] == ["--"]:
        args.program = args.program[1:]
    if not args.program or args.uid == 0:
        parser.error("a program and a non-root --uid are required")

    for procs in args.cgroup_procs:
        with open(procs, "w") as handle:
            handle.write("0\n")
    netns = os.open(args.netns, os.O_RDONLY)
    _check(_libc.setns(netns, CLONE_NEWNET), "setns")
    os.close(netns)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID), "unshare")

    pid = os.fork()
    if pid == 0:
        try:
            _first_process(args)
        except BaseException as exc:  # nothing above us can report it: say it and end
            print(f"jail_launch: {exc}", file=sys.stderr, flush=True)
        os._exit(127)
    print(pid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
