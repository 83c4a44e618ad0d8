"""Test-only start-up hook for a daemon under test (tests/support/journald.py).

Python imports ``sitecustomize`` at start-up; the tests put this folder on
PYTHONPATH only for the daemons whose journal they read.  When
``MADOGUCHI_TEST_JOURNAL_DIR`` names a folder, the process moves into its own
mount namespace in which ``/run`` is a fresh tmpfs and ``/run/systemd/journal``
is that folder: the journal socket systemd-python writes to (the path is
fixed in libsystemd) is then the test's fake journald.  Nothing else of the
machine changes, and nothing of madoguchi knows about it.

As root a mount namespace is enough; otherwise a user namespace that maps
the user to itself comes with it (unprivileged user namespaces must be
allowed).  The variable is removed, so the daemon's own children start
normally.
"""

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"journal namespace for the test: {what}: {os.strerror(errno)}")


def _install(folder: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() == 0:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:
        uid, gid = os.getuid(), os.getgid()
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _check(libc.mount(b"tmpfs", b"/run", b"tmpfs", 0, b"mode=0755"), "tmpfs on /run")
    os.makedirs("/run/systemd/journal")
    _check(libc.mount(folder.encode(), b"/run/systemd/journal", None, MS_BIND, None), "bind the journal folder")


_folder = os.environ.pop("MADOGUCHI_TEST_JOURNAL_DIR", None)
if _folder:
    _install(_folder)
