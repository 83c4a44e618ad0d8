"""The Debian packages (issue #7 item 5): built by debian/build.sh with
dpkg-buildpackage in a trixie root, lintian-clean, and installed for real into
a fresh trixie root (the script's --install-test, which checks conffiles, the
user, its groups, units, commands and purge, and fails on any miss).

One build per module (~45 s with the script's cache warm; the first run on a
machine also debootstraps trixie and installs the build tools: ~3 min).
Needs root and a Debian mirror, like `./dev package`.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = re.match(r"\S+ \(([^)]+)\)", (ROOT / "debian/changelog").read_text()).group(1)
PACKAGES = ("madoguchi-common", "madoguchi-edge", "madoguchi-central")

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("debian/build.sh needs root (debootstrap, chroot)")
    out = tmp_path_factory.mktemp("packages")
    proc = subprocess.run(
        [str(ROOT / "debian/build.sh"), "--install-test", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=880,
    )
    if proc.returncode != 0:
        pytest.fail(f"debian/build.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return out


def deb(out: Path, package: str) -> Path:
    return out / f"{package}_{VERSION}_all.deb"


def contents(out: Path, package: str) -> list[str]:
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb(out, package))],
                             capture_output=True, text=True, check=True).stdout
    # "-rw-r--r-- root/root 123 2026-01-01 00:00 ./usr/bin/madoguchi"
    return [line.split(None, 5)[5].removeprefix(".").split(" -> ")[0] for line in listing.splitlines()]


def field(out: Path, package: str, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb(out, package)), name],
                          capture_output=True, text=True, check=True).stdout.strip()


def conffiles(out: Path, package: str) -> set[str]:
    proc = subprocess.run(["dpkg-deb", "--info", str(deb(out, package)), "conffiles"],
                          check=False, capture_output=True, text=True)
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


def tracked(*patterns: str) -> list[str]:
    return subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard",
                           *patterns], capture_output=True, text=True, check=True).stdout.split()


def test_three_packages_built(built):
    for package in PACKAGES:
        assert deb(built, package).stat().st_size > 1000, package
        assert field(built, package, "Architecture") == "all"
    assert not list(ROOT.glob("*.deb")) and not list(ROOT.parent.glob(f"madoguchi_{VERSION}_*.changes")), \
        "build products must not land in or beside the git tree"


def test_lintian_reports_no_errors(built):
    report = (built / "lintian.txt").read_text()
    errors = [line for line in report.splitlines() if line.startswith("E: ")]
    assert errors == []
    # lintian ran on the .changes (all three packages) and exited 0
    summary = (built / "lintian-summary.txt").read_text().split()
    assert summary[:3] == [f"changes=madoguchi_{VERSION}_amd64.changes", "exit=0", "errors=0"]


def test_command_and_modules_where_they_belong(built):
    common, edge, central = (set(contents(built, p)) for p in PACKAGES)
    assert "/usr/bin/madoguchi" in common
    assert "/usr/share/man/man1/madoguchi.1.gz" in common
    assert "/usr/lib/sysusers.d/madoguchi-common.conf" in common
    assert "/usr/lib/tmpfiles.d/madoguchi-common.conf" in common
    assert any(p.startswith("/usr/lib/madoguchi/madoguchi-") and p.endswith("dist-info/entry_points.txt")
               for p in common)
    # every module and page of the tree is shipped, each in its package
    where = {"bus": common, "drivers": edge, "edge": edge, "central": central}
    for path in tracked("bus/", "drivers/", "edge/", "central/"):
        if path.endswith((".py", ".html", ".css", ".js")):
            assert f"/usr/lib/madoguchi/{path}" in where[path.split("/")[0]], path
    # the edge has no central code and the reverse (a Pi lists only its commands)
    assert not any(p.startswith("/usr/lib/madoguchi/central") for p in common | edge)
    assert not any(p.startswith(("/usr/lib/madoguchi/edge", "/usr/lib/madoguchi/drivers")) for p in common | central)
    # nothing in the shared dist-packages: the top-level names are too generic
    assert not any("dist-packages" in p for p in common | edge | central)


def test_no_tests_or_bytecode_shipped(built):
    for package in PACKAGES:
        for path in contents(built, package):
            assert "__pycache__" not in path and not path.endswith((".pyc", ".pyo")), path
            assert "/tests/" not in path and not path.rsplit("/", 1)[-1].startswith("test_"), path
            assert not path.startswith(("/usr/local", "/home", "/root")), path


def test_units_installed(built):
    units = sorted(p.name for p in (ROOT / "debian").glob("madoguchi-*.service"))
    assert units, "debian/madoguchi-edge.service and madoguchi-central.service are missing"
    for unit in units:
        package = unit.removesuffix(".service").removesuffix("@")
        assert f"/usr/lib/systemd/system/{unit}" in contents(built, package), unit


def test_conffiles(built):
    assert conffiles(built, "madoguchi-edge") == {"/etc/madoguchi/edge.toml"}
    assert conffiles(built, "madoguchi-central") == {
        f"/etc/madoguchi/{name}.toml" for name in ("central", "site", "fees", "brands")}
    assert conffiles(built, "madoguchi-common") == set()
    # the shipped edge.toml is the counter sample, unchanged
    files = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb(built, "madoguchi-edge"))],
                           capture_output=True, check=True).stdout
    assert (ROOT / "config/edge-counter-1.toml").read_bytes() in files


def test_mosquitto_templates_are_templates_not_conffiles(built):
    templates = tracked("config/mosquitto/")
    assert templates, "config/mosquitto/ has no templates"
    central = set(contents(built, "madoguchi-central"))
    for path in templates:  # where `madoguchi broker init` looks first (central/broker_admin.py)
        assert f"/usr/share/madoguchi/{path.removeprefix('config/')}" in central, path
    assert not any(p.startswith("/etc/mosquitto") for p in central)


# pyproject name -> (Debian package, the minimum control must ask for).  A
# different minimum is a decision written in docs/packaging.md.
DEBIAN_NAMES = {
    "pydantic": ("python3-pydantic", "2.10"),
    "paho-mqtt": ("python3-paho-mqtt", "2.1"),
    "fastapi": ("python3-fastapi", "0.110"),
    "uvicorn": ("python3-uvicorn", "0.30"),
    "openpyxl": ("python3-openpyxl", "3.1"),
    "cryptography": ("python3-cryptography", "38"),
    "systemd-python": ("python3-systemd", "235"),
    "pyserial": ("python3-serial", "3.5"),
    "Pillow": ("python3-pil", None),  # any Pillow in trixie (11) is >= 10
    "gpiozero": ("python3-gpiozero", "1.6.2"),  # Debian has 1.6.2, Raspberry Pi OS 2.x
    "python-escpos": (None, None),  # not in Debian: docs/packaging.md
    "qrcode": ("python3-qrcode", "7.4"),
}


def test_depends_follow_pyproject(built):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {"madoguchi-common": project["dependencies"] + extras["systemd"],  # bus/sdnotify.py
              "madoguchi-edge": extras["edge"],
              "madoguchi-central": extras["central"]}
    for package, requirements in wanted.items():
        depends = field(built, package, "Depends")
        for requirement in requirements:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
            assert name in DEBIAN_NAMES, f"{name} ({package}): add it to debian/control and DEBIAN_NAMES"
            debian, minimum = DEBIAN_NAMES[name]
            if debian is None:
                continue
            expected = f"{debian} (>= {minimum})" if minimum else debian
            assert re.search(rf"(^|, ){re.escape(expected)}(,|$)", depends), f"{package}: {expected} in {depends}"


def test_installed_for_real(built):
    report = (built / "install-test.txt").read_text()
    assert report.rstrip().endswith("install test passed")
    assert "FAIL:" not in report
    for check in ("ok: edge.toml conffile: root:madoguchi 640 /etc/madoguchi/edge.toml",
                  "ok: state directory: madoguchi:madoguchi 750 /var/lib/madoguchi",
                  "ok: edge groups after the gpio group appears: madoguchi lp dialout audio gpio",
                  "ok: commands with only the edge: edge",
                  "ok: set-config by the daemon: edge.toml edge.toml.bak",
                  "ok: purge keeps the state: state"):
        assert check in report
    for unit in (p.name for p in (ROOT / "debian").glob("madoguchi-*.service")):
        assert f"ok: {unit} installed: /usr/lib/systemd/system/{unit}" in report
        assert f"ok: {unit} not enabled on install: disabled" in report
