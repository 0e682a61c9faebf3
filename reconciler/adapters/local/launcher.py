"""The child side of a local step that needs volumes, a memory limit or another user.

``processes.start_process`` runs this file as a script (``python -I -S
launcher.py CONFIG ARGV...``) with the step's own environment. It sets the
process up (a private mount namespace with the step's volumes bind-mounted,
an address-space limit, the step's user), then ``exec``s the step's command
in place, so the step keeps this process id and process group and costs no
extra process.

It runs once per step, so it starts as little as it can: ``-S`` skips
``site``, and it imports only os, sys, marshal and resource (not even
``typing``), plus ctypes when there are volumes to mount: 4-5 ms on top of a
bare interpreter start. For the same reason CONFIG and the failure report are
``marshal`` data (hex-encoded in argv) rather than JSON: ``import json``
alone costs more than the rest of the start-up (it pulls in ``re``), and the
parent runs this same interpreter, so the format always matches. As nothing
of the ``reconciler`` package is imported, the child never has to find it on
``sys.path`` although its environment is replaced; ``-I`` also makes the
interpreter ignore the ``PYTHON*`` variables the step's environment may carry.

Setup failures go back to the parent on a close-on-exec pipe (its descriptor
number is in CONFIG) as one marshalled dict ``{"kind", "errno", "path",
"detail"}``; a successful ``exec`` closes the pipe with nothing written. The
parent turns a report into a readable ``StepStartError``.

CONFIG is a dict::

    {"report_fd": 5, "cwd": "/abs/dir", "lc_ctype": None,
     "mounts": [{"source": "/abs/dir", "target": "/workspace", "read_only": False}],
     "memory_limit_bytes": 67108864, "run_as_user": 65534}
"""

from __future__ import annotations

import marshal
import os
import resource
import sys

# os.execvpe imports warnings when it is called. Nothing may be imported after
# switching users: the interpreter's own files may be unreadable to that user.
import warnings  # noqa: F401

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs 17 ms here
if TYPE_CHECKING:
    import ctypes
    from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21

# statvfs flags a read-only remount must keep: in a user namespace the kernel
# refuses a remount that would clear a flag the outer mount has locked.
_KEPT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)

EPERM = 1  # errno.EPERM, without importing errno
EXIT_SETUP_FAILED = 127


def encode(value: Any) -> str:
    """CONFIG and reports on the wire: marshal, hex for argv (no NUL bytes there)."""
    return marshal.dumps(value).hex()


def decode(text: str) -> Any:
    return marshal.loads(bytes.fromhex(text))


class SetupError(Exception):
    """A setup step failed; ``kind`` tells the parent which message to write."""

    def __init__(
        self, kind: str, *, error: OSError | None = None, path: str = "", detail: str = ""
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.errno = error.errno if error is not None else None
        self.path = path
        self.detail = detail or (error.strerror or str(error) if error is not None else "")


def main() -> None:
    config: dict[str, Any] = decode(sys.argv[1])
    argv = sys.argv[2:]
    report_fd: int = config["report_fd"]
    # Inherited on purpose (pass_fds); closing it on exec is what tells the
    # parent that exec succeeded.
    os.set_inheritable(report_fd, False)
    try:
        env = step_environment(config["lc_ctype"])
        if config["mounts"]:
            enter_mount_namespace(may_use_user_namespace=config["run_as_user"] is None)
            # Parents before children, or a later mount would hide an earlier one.
            for mount in sorted(config["mounts"], key=lambda m: m["target"].count("/")):
                bind_mount(mount["source"], mount["target"], read_only=mount["read_only"])
        if config["memory_limit_bytes"] is not None:
            limit_memory(config["memory_limit_bytes"])
        if config["run_as_user"] is not None:  # after mounting: that needs privileges
            switch_user(config["run_as_user"])
        try:
            os.chdir(config["cwd"])
        except OSError as error:
            raise SetupError("cwd", error=error, path=config["cwd"]) from error
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as error:
            raise SetupError("exec", error=error, path=argv[0]) from error
    except SetupError as failure:
        report = {
            "kind": failure.kind,
            "errno": failure.errno,
            "path": failure.path,
            "detail": failure.detail,
        }
    except Exception as error:  # a bug here must still reach the parent as a report
        report = {"kind": "internal", "errno": None, "path": "", "detail": repr(error)}
    os.write(report_fd, marshal.dumps(report))
    os._exit(EXIT_SETUP_FAILED)


def step_environment(lc_ctype: str | None) -> dict[str, str]:
    """The environment the parent gave, minus what the interpreter added.

    CPython coerces a C locale by setting ``LC_CTYPE=C.UTF-8`` in its own
    environment at start-up (PEP 538, even with ``-I``); the parent passes the
    step's real ``LC_CTYPE`` (or None) so the step sees exactly its environment.
    """
    env = dict(os.environ)
    if lc_ctype is None:
        env.pop("LC_CTYPE", None)
    else:
        env["LC_CTYPE"] = lc_ctype
    return env


_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    """The C library of this process (glibc or musl alike), loaded on first use."""
    global _libc_handle
    if _libc_handle is None:
        import ctypes  # only steps with volumes pay for it

        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare.argtypes = [ctypes.c_int]
        libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
        ]
        _libc_handle = libc
    return _libc_handle


def _last_error() -> OSError:
    import ctypes

    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


def _mount(source: str | None, target: str, flags: int, kind: str) -> None:
    encoded = source.encode() if source is not None else None
    if _libc().mount(encoded, target.encode(), None, flags, None) != 0:
        raise SetupError(kind, error=_last_error(), path=target)


def enter_mount_namespace(*, may_use_user_namespace: bool) -> None:
    """A private mount namespace: mounts made here are invisible to the host.

    Without CAP_SYS_ADMIN (not root) a plain CLONE_NEWNS fails with EPERM;
    where the kernel allows unprivileged user namespaces, a user namespace
    mapping only our own uid and gid gives the capability inside it, and files
    the step writes still belong to us. That path cannot switch users, so it is
    tried only when no other user was asked for.
    """
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        error = _last_error()
        if not (error.errno == EPERM and may_use_user_namespace):
            raise SetupError("namespace", error=error)
        uid, gid = os.geteuid(), os.getegid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            raise SetupError("namespace", error=_last_error())
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError as error:
            raise SetupError("namespace", error=error) from error
    # Mount events must not propagate back to the host's namespace.
    _mount(None, "/", MS_REC | MS_PRIVATE, "namespace")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def bind_mount(source: str, target: str, *, read_only: bool) -> None:
    """Show source at target, creating target (on the host's filesystem) if missing."""
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as error:
        raise SetupError("mkdir", error=error, path=target) from error
    _mount(source, target, MS_BIND | MS_REC, "mount")
    if read_only:
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        current = os.statvfs(target).f_flag
        for statvfs_flag, mount_flag in _KEPT_FLAGS:
            if current & statvfs_flag:
                flags |= mount_flag
        _mount(None, target, flags, "readonly")


def limit_memory(limit: int) -> None:
    """RLIMIT_AS: each process of the step may map at most ``limit`` bytes."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError) as error:
        raise SetupError("memory", detail=str(error)) from error


def switch_user(uid: int) -> None:
    """Drop to uid (and gid = uid) with no supplementary groups, for good."""
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    except OSError as error:
        raise SetupError("user", error=error, path=str(uid)) from error


if __name__ == "__main__":
    main()
