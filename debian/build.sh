#!/usr/bin/env bash
# Build the madoguchi Debian packages for trixie, lint them, and optionally
# install them into a clean trixie root.  `./dev package` runs this.
#
#   debian/build.sh                   build (dpkg-buildpackage -us -uc -b) + lintian
#   debian/build.sh --install-test    ... then apt-get install the .debs into a
#                                     fresh trixie root and check where things land
#   --out DIR                         where the .debs go (default /tmp/madoguchi-packages)
#
# The packages target Debian trixie and Raspberry Pi OS trixie: their run-time
# dependencies (pydantic 2, paho-mqtt 2, fastapi, uvicorn) are too old on bookworm,
# and the build needs setuptools >= 77 (PEP 639 licence in pyproject.toml).  So the
# build runs in a trixie root made with debootstrap (chroot, no container), cached
# in $MADOGUCHI_PKG_CACHE (default /var/cache/madoguchi-pkg).  Nothing is written
# into the git tree: the tree is copied into the root and built there.
# Needs root (debootstrap, chroot, mount) and the network to a Debian mirror.
# docs/packaging.md explains the choices.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${MADOGUCHI_PKG_CACHE:-/var/cache/madoguchi-pkg}
mirror=${MADOGUCHI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=trixie
out=/tmp/madoguchi-packages
install_test=0

say() { printf '\033[1m[package]\033[0m %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --install-test) install_test=1 ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot): run as root or with sudo"
case "$out" in "$here"|"$here"/*) die "--out must be outside the source tree ($here)";; esac

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

mkdir -p "$cache/archives" "$out"
# One build at a time per cache (the build root is shared).
exec 9>"$cache/lock"
flock 9
minbase="$cache/$suite-minbase.tar"
buildroot="$cache/$suite-build"
mounts=()

cleanup() {
    local i
    for ((i=${#mounts[@]}-1; i>=0; i--)); do
        umount -l "${mounts[$i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT

# Mount what apt and dpkg need inside a root; the .deb cache is shared by every
# root so that repeated runs download nothing.
enter() {  # $1 = root
    mount -t proc proc "$1/proc"; mounts+=("$1/proc")
    mkdir -p "$1/var/cache/apt/archives"
    mount --bind "$cache/archives" "$1/var/cache/apt/archives"; mounts+=("$1/var/cache/apt/archives")
    cp /etc/resolv.conf "$1/etc/resolv.conf" 2>/dev/null || true
}
leave() {  # $1 = root
    umount -l "$1/var/cache/apt/archives" "$1/proc" 2>/dev/null || true
    mounts=()
}
in_root() {  # $1 = root, rest = command
    local root=$1; shift
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}
# apt inside a root: no pty for dpkg's log, no _apt sandbox (the shared archive
# belongs to root).
apt_opts=(-o Dpkg::Use-Pty=0 -o APT::Sandbox::User=root)

# 1. A minimal trixie (debootstrap minbase, ~40 s, ~40 MB downloaded), kept as a
#    tarball for 30 days; every install test starts from a fresh copy of it.
if [ ! -s "$minbase" ] || [ -n "$(find "$minbase" -mtime +30)" ]; then
    say "debootstrap --variant=minbase $suite (once; cached in $cache)"
    tmp=$(mktemp -d "$cache/debootstrap.XXXXXX")
    debootstrap --variant=minbase --cache-dir="$cache/archives" "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; rm -rf "$tmp"; die "debootstrap failed (log: $cache/debootstrap.log)"; }
    echo "deb $mirror $suite main" > "$tmp/etc/apt/sources.list"
    chmod 0755 "$tmp"
    tar -C "$tmp" -cf "$minbase.new" . && mv "$minbase.new" "$minbase"
    rm -rf "$tmp" "$buildroot"
fi

# 2. The build root: minbase + debian/control's Build-Depends + lintian, updated
#    when debian/control changes.
want=$(sha256sum "$here/debian/control" | cut -c1-16)
if [ "$(cat "$buildroot/.madoguchi-build-deps" 2>/dev/null)" != "$want" ]; then
    if [ ! -d "$buildroot" ]; then
        say "making the build root from $minbase"
        mkdir -p "$buildroot" && tar -C "$buildroot" -xf "$minbase"
    fi
    say "installing the build dependencies and lintian in the build root"
    mkdir -p "$buildroot/tmp/control/debian"
    cp "$here/debian/control" "$buildroot/tmp/control/debian/control"
    enter "$buildroot"
    in_root "$buildroot" apt-get "${apt_opts[@]}" update -qq
    in_root "$buildroot" apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends build-essential lintian >/dev/null
    in_root "$buildroot" apt-get "${apt_opts[@]}" build-dep -y -qq /tmp/control >/dev/null
    leave "$buildroot"
    echo "$want" > "$buildroot/.madoguchi-build-deps"
fi

# 3. Copy the tree (tracked and new files, not what .gitignore ignores), then
#    dpkg-buildpackage -us -uc -b in the build root.
version=$(sed -n '1s/^[^ ]* (\([^)]*\)).*/\1/p' "$here/debian/changelog")
rm -rf "$buildroot/build" && mkdir -p "$buildroot/build/madoguchi-$version"
if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$here" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -C "$buildroot/build/madoguchi-$version" -xf -
else
    tar -C "$here" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=node_modules -cf - . | tar -C "$buildroot/build/madoguchi-$version" -xf -
fi

say "dpkg-buildpackage -us -uc -b (trixie root)"
start=$(date +%s)
enter "$buildroot"
if ! in_root "$buildroot" sh -c "cd /build/madoguchi-$version && dpkg-buildpackage -us -uc -b" \
        >"$out/build.log" 2>&1; then
    tail -40 "$out/build.log" >&2
    die "dpkg-buildpackage failed (log: $out/build.log)"
fi
say "built in $(( $(date +%s) - start )) s"

# 4. lintian on the .changes: errors fail, warnings are listed.  Overrides live in
#    debian/*.lintian-overrides, each with the reason beside it.
changes=$(cd "$buildroot/build" && ls madoguchi_"$version"_*.changes)
set +e
in_root "$buildroot" lintian --info --display-level '>=warning' --fail-on error \
    "/build/$changes" >"$out/lintian.txt" 2>&1
lintian_rc=$?
set -e
leave "$buildroot"

rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
cp "$buildroot"/build/*.deb "$buildroot/build/$changes" "$out/"
cp "$buildroot"/build/*.buildinfo "$out/" 2>/dev/null || true

errors=$(grep -c '^E: ' "$out/lintian.txt" || true)
warnings=$(grep -c '^W: ' "$out/lintian.txt" || true)
say "lintian: $errors error(s), $warnings warning(s) ($out/lintian.txt)"
printf 'changes=%s exit=%s errors=%s warnings=%s\n' "$changes" "$lintian_rc" "$errors" "$warnings" >"$out/lintian-summary.txt"
grep -E '^(E|W): ' "$out/lintian.txt" >&2 || true
if [ "$lintian_rc" -ne 0 ] || [ "$errors" -ne 0 ]; then
    die "lintian reports errors (exit $lintian_rc)"
fi
for deb in "$out"/*.deb; do say "$(basename "$deb")"; done

[ "$install_test" -eq 1 ] || exit 0

# 5. A real install into a fresh trixie root: apt-get resolves the Depends from
#    trixie, dpkg runs the maintainer scripts (sysusers, tmpfiles, groups).
#    Recommends (chromium, open-jtalk, ...) are left out to keep it quick.
#    Every check below fails the run; the transcript is $out/install-test.txt.
root=$(mktemp -d "$cache/install-test.XXXXXX")
mounts=()
cleanup_root() { cleanup; rm -rf "$root"; }
trap cleanup_root EXIT
tar -C "$root" -xf "$minbase"
chmod 0755 "$root"  # it is /: the madoguchi user must get through it
mkdir -p "$root/debs" && cp "$out"/*.deb "$root/debs/"
enter "$root"
start=$(date +%s)
say "install test: apt-get install the packages into a fresh $suite root"
report="$out/install-test.txt"
: >"$report"
run() { echo "\$ $*" >>"$report"; in_root "$root" "$@" >>"$report" 2>&1 || { tail -30 "$report" >&2; die "install test failed: $*"; }; }
# expect WHAT EXPECTED COMMAND...: the command's output must be EXPECTED.
expect() {
    local what=$1 want=$2 got; shift 2
    got=$(in_root "$root" "$@" 2>&1) || true
    if [ "$got" = "$want" ]; then
        echo "ok: $what: $got" >>"$report"
    else
        echo "FAIL: $what: expected '$want', got '$got'" >>"$report"
        die "install test: $what: expected '$want', got '$got'"
    fi
}
# a unit the source tree has must be installed, disabled (docs/install.md)
check_units() {  # $1 = package
    local unit
    for unit in "$here"/debian/"$1".service "$here"/debian/"$1"@.service; do
        [ -e "$unit" ] || continue
        unit=$(basename "$unit")
        expect "$unit installed" "/usr/lib/systemd/system/$unit" ls "/usr/lib/systemd/system/$unit"
        expect "$unit not enabled on install" disabled systemctl is-enabled "$unit"
    done
}
run apt-get "${apt_opts[@]}" update -qq
run apt-get "${apt_opts[@]}" install -y -q --no-install-recommends \
    /debs/madoguchi-common_"$version"_all.deb /debs/madoguchi-edge_"$version"_all.deb
expect "edge.toml conffile" "root:madoguchi 640 /etc/madoguchi/edge.toml" stat -c "%U:%G %a %n" /etc/madoguchi/edge.toml
expect "state directory" "madoguchi:madoguchi 750 /var/lib/madoguchi" stat -c "%U:%G %a %n" /var/lib/madoguchi
expect "system user" "madoguchi:/var/lib/madoguchi:/usr/sbin/nologin" \
    sh -c 'getent passwd madoguchi | cut -d: -f1,6,7'
expect "edge groups (no gpio group on Debian)" "madoguchi lp dialout audio" id -nG madoguchi
expect "conffiles of madoguchi-edge" "/etc/madoguchi/edge.toml" \
    sh -c 'dpkg-query --showformat="\${Conffiles}\n" --show madoguchi-edge | awk "NF {print \$1}"'
check_units madoguchi-edge
# Raspberry Pi OS has a gpio group (raspberrypi-sys-mods); a reconfigure joins it
run groupadd --system gpio
run dpkg-reconfigure madoguchi-edge
expect "edge groups after the gpio group appears" "madoguchi lp dialout audio gpio" id -nG madoguchi
expect "commands with only the edge" "edge" \
    sh -c 'madoguchi --help | sed -n "/^positional/,/^options/p" | awk "/^    [a-z]/ {print \$1}" | tr "\n" " " | sed "s/ $//"'
run madoguchi edge --help
expect "config folder (set-config writes there)" "root:madoguchi 2770 /etc/madoguchi" stat -c "%U:%G %a %n" /etc/madoguchi
# IT's set-config as the daemon's user, with the packaged permissions (edge/fleet.py)
run runuser -u madoguchi -- python3 -c 'import sys; sys.path.insert(0, "/usr/lib/madoguchi")
from pathlib import Path
from edge.config import EdgeConfig
from edge.fleet import write_config
path = Path("/etc/madoguchi/edge.toml")
write_config(path, path.read_bytes().replace(b"debounce_ms = 50", b"debounce_ms = 60"), EdgeConfig)
print("set-config written:", b"debounce_ms = 60" in path.read_bytes())'
expect "set-config by the daemon" "edge.toml edge.toml.bak" sh -c 'ls /etc/madoguchi | tr "\n" " " | sed "s/ $//"'
run stat -c "%U:%G %a %n" /etc/madoguchi/edge.toml /etc/madoguchi/edge.toml.bak  # recorded, see docs/packaging.md
run sh -c 'python3 -c "import sys; sys.path.insert(0, \"/usr/lib/madoguchi\"); import edge.app, drivers.printer.printer"'
run apt-get "${apt_opts[@]}" install -y -q --no-install-recommends /debs/madoguchi-central_"$version"_all.deb
for f in central site fees brands; do
    expect "$f.toml conffile" "root:madoguchi 640 /etc/madoguchi/$f.toml" stat -c "%U:%G %a %n" "/etc/madoguchi/$f.toml"
done
check_units madoguchi-central
run madoguchi central --help
run sh -c 'python3 -c "import sys; sys.path.insert(0, \"/usr/lib/madoguchi\"); import central.app"'
# purge: configuration gone, state and user kept (docs/install.md)
run sh -c 'echo state > /var/lib/madoguchi/probe'
run apt-get "${apt_opts[@]}" purge -y -q madoguchi-edge madoguchi-central madoguchi-common
expect "purge removes /etc/madoguchi" absent sh -c '[ -e /etc/madoguchi ] && echo present || echo absent'
expect "purge keeps the state" state cat /var/lib/madoguchi/probe
leave "$root"
echo "install test passed" >>"$report"
say "install test passed in $(( $(date +%s) - start )) s ($report)"
