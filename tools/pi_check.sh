#!/usr/bin/env bash
# make pi-check: the terminal on a Raspberry Pi's OS and CPU, as far as this machine can take it.
#
# Builds a Debian bookworm arm64 root filesystem (debootstrap + qemu-user-static through binfmt),
# copies into it a device bundle made by `chot provision init-fleet` + `chot provision device`, and
# runs the REAL provisioning/setup-terminal.sh inside it (chroot): real apt-get, venv, hash-checked
# pip installs of the pinned aarch64 wheels, users, groups and file modes. Then, inside the root, as
# the service user: `chot terminal check-config`, `chot terminal selftest` (mock pins, files source,
# a real TLS Mosquitto of the fleet on the host's loopback), `chot scan` of the public photos compared
# with the same scan on this machine, a short `chot terminal run` on frames of signed declarations
# whose outbox must hold the expected events, and `systemd-analyze verify` of the unit. Prints the
# time of each phase. Not part of `make test`; a second run reuses the root, the fleet and the wheel,
# and the boot's result while the wheel, the unit, the config and the root are the same.
#
# Environment: PI_CHECK_DIR (cache, default /var/tmp/chot-pi-check), PI_CHECK_PY (a Python with chot's
# dependencies, default .venv/bin/python), PI_CHECK_FRESH=1 (rebuild the root from scratch),
# PI_CHECK_BOOT=0 (skip booting the root with systemd-nspawn -b).
set -euo pipefail

WT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PI_CHECK_DIR:-/var/tmp/chot-pi-check}"
HOSTPY="${PI_CHECK_PY:-$WT/.venv/bin/python}"
R="$CACHE/rootfs"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# a minimal Debian; the script installs the rest (python3-venv, numpy, pillow, zbar...) with apt itself
INCLUDE=python3,python3-venv,python3-pip,ca-certificates,systemd,passwd,build-essential,python3-dev
DEVICE=pi-check-gate-1-in
PORT=18883
PHOTOS="$WT/../shared/testdata/qr-photos"
SUMMARY="$CACHE/summary.txt"
MOUNTS=()
BROKER_PID=""

say()  { printf '\n=== %s\n' "$*"; }
die()  { printf 'pi-check: FAILED: %s\n' "$*" >&2; exit 1; }
T0=$(date +%s); PHASE=""; PSTART=0
: >"${SUMMARY}.new" 2>/dev/null || { mkdir -p "$CACHE"; : >"${SUMMARY}.new"; }
phase() {  # phase NAME: end the previous phase (recording its time) and start NAME
  local now; now=$(date +%s)
  [ -n "$PHASE" ] && printf '%-40s %4ss  %s\n' "$PHASE" $((now - PSTART)) "${NOTE:-ok}" >>"${SUMMARY}.new"
  PHASE="$1"; PSTART=$now; NOTE=""
  [ -n "$PHASE" ] && say "$PHASE"
  return 0
}
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -n "$PHASE" ]; then NOTE="FAILED (exit $rc)"; phase ""; fi
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
  if [ -f "${SUMMARY}.new" ]; then
    mv -f "${SUMMARY}.new" "$SUMMARY"
    printf '\n=== pi-check summary (%s, total %ss)\n' "$([ "$rc" = 0 ] && echo PASSED || echo FAILED)" $(( $(date +%s) - T0 ))
    cat "$SUMMARY"
  fi
}
trap cleanup EXIT
# the self-test's clock item reads the kernel's NTP state (adjtimex), shared with this machine: it may only
# fail in the root when it fails here too
HOST_CLOCK="$(cd "$WT" && "$HOSTPY" -c 'from device.clock import kernel_synced; print("synced" if kernel_synced() else "unsynced")')"
selftest_ok() {  # selftest_ok LOG: nothing FAILED but, on an unsynchronised host, the clock
  local failed; failed="$(sed -n 's/^FAIL  \([a-z_]*\).*/\1/p' "$1" | sort -u | tr '\n' ' ')"
  [ -z "$failed" ] && return 0
  [ "$HOST_CLOCK" = unsynced ] && [ "$failed" = "clock " ] && return 0
  echo "the self-test failed: $failed(host clock $HOST_CLOCK)" >&2; return 1
}
[ "$(id -u)" = 0 ] || die "run it as root (debootstrap, chroot and binfmt need it)"
[ -x "$HOSTPY" ] || die "$HOSTPY: no Python with chot's dependencies (make deps, or PI_CHECK_PY=...)"
hchot() { (cd "$WT" && "$HOSTPY" -c 'import sys; from chot.cli import main; sys.exit(main())' "$@"); }
inroot() {  # run a command in the arm64 root, with a clean environment
  chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}
aschot() { inroot runuser -u chot -- "$@"; }  # as the service user, as systemd runs it (cwd /)

# --- host tools ------------------------------------------------------------------------------------------------
phase "host: debootstrap, qemu, binfmt"
missing=""
for p in debootstrap qemu-user-static binfmt-support mosquitto; do dpkg -s $p >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
  || die "cannot register the qemu-aarch64 binfmt handler (update-binfmts --enable qemu-aarch64)"
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "the qemu-aarch64 binfmt handler is disabled"
NOTE="$(qemu-aarch64-static --version | head -n1)"

# --- the arm64 root --------------------------------------------------------------------------------------------
phase "rootfs: debootstrap $SUITE arm64"
KEY="$SUITE arm64 $MIRROR $INCLUDE"
if [ "${PI_CHECK_FRESH:-0}" = 1 ]; then rm -rf "$R" "$CACHE/rootfs.stamp" "$CACHE/fleet" "$CACHE/wheel" "$CACHE/x86-venv" "$CACHE/boot.stamp" "$CACHE/setup.done"; fi
if [ -f "$CACHE/rootfs.stamp" ] && [ "$(cat "$CACHE/rootfs.stamp")" = "$KEY" ] && [ -x "$R/usr/bin/python3" ]; then
  NOTE="cached"
else
  rm -rf "$R"; mkdir -p "$CACHE"
  debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" "$SUITE" "$R" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log"; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  printf '%s\n' "$KEY" >"$CACHE/rootfs.stamp"
  NOTE="built"
fi
[ "$(inroot uname -m)" = aarch64 ] || die "the root does not run as aarch64"
for m in proc sys dev dev/pts; do
  mountpoint -q "$R/$m" || { case $m in proc) mount -t proc proc "$R/proc" ;; sys) mount -t sysfs sys "$R/sys" ;;
                                          *) mount --bind "/$m" "$R/$m" ;; esac; MOUNTS+=("$R/$m"); }
done
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
# debootstrap writes no /etc/hosts; every installed system (Raspberry Pi OS too) has these lines
grep -qs '^127.0.0.1[[:space:]].*localhost' "$R/etc/hosts" || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >>"$R/etc/hosts"
# this machine's own certificate authorities (a TLS-inspecting egress proxy, say), so that pip in the
# root reaches PyPI as it does here; a real Pi needs none of this
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$R/usr/local/share/ca-certificates"
  if ! diff -rq /usr/local/share/ca-certificates "$R/usr/local/share/ca-certificates" >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/"
    inroot update-ca-certificates >/dev/null 2>&1 || true
  fi
fi
NOTE="$NOTE; $(inroot python3 -c 'import platform; print(platform.machine(), platform.python_version())')"

# --- fleet, wheel, bundle, frames (on this machine) --------------------------------------------------------
phase "bundle: fleet, wheel, device, frames"
F="$CACHE/fleet"; W="$CACHE/wheel"; FR="$CACHE/frames"
src_hash="$(cd "$WT" && git ls-files -co --exclude-standard -- chot device collector provisioning chotdemo systemd setup.py pyproject.toml \
            | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
if [ ! -f "$W/src.sha256" ] || [ "$(cat "$W/src.sha256")" != "$src_hash" ] || ! ls "$W"/chot-*.whl >/dev/null 2>&1; then
  rm -rf "$W"; mkdir -p "$W"
  (cd "$WT" && "$HOSTPY" -m pip wheel -q --no-deps -w "$W" . ) || die "cannot build the chot wheel"
  rm -rf "$WT/build"
  printf '%s\n' "$src_hash" >"$W/src.sha256"
fi
WHEEL="$(ls "$W"/chot-*.whl | head -n1)"
if [ ! -f "$F/ca/ca.crt" ]; then
  rm -rf "$F" "$FR" "$CACHE/issuer"
  hchot provision init-fleet "$F" --broker-host localhost --broker-port $PORT >/dev/null
  hchot issue keygen --out "$CACHE/issuer" >/dev/null
  hchot provision device "$DEVICE" --fleet "$F" --checkpoint pi-check-gate-1 --direction in \
    --set scanner.source='"files"' --set scanner.path='"/srv/pi-check/frames"' --set pins.factory='"mock"' \
    --set mqtt.port=$PORT --trust "$CACHE/issuer/issuer.pub.pem" --wheel "$WHEEL" >/dev/null
else
  hchot provision bundle "$DEVICE" --fleet "$F" --wheel "$WHEEL" >/dev/null
fi
BUNDLE="$F/bundles/chot-$DEVICE.tar.gz"
[ -f "$BUNDLE" ] || die "no bundle at $BUNDLE"
# the frames: signed native declarations (three people) and one expired one, as PNG frames
rm -rf "$FR"; mkdir -p "$FR/cards"
for i in 1 2 3; do
  hchot issue declaration --key "$CACHE/issuer/issuer.key.pem" --out "$FR/cards" --fake --seed $i --valid-hours 24 2>/dev/null
done
hchot issue declaration --key "$CACHE/issuer/issuer.key.pem" --out "$FR/cards" --fake --seed 9 --valid-hours 1 \
  --issued-at "$(date -u -d '-3 hours' +%Y-%m-%dT%H:%M:%SZ)" 2>/dev/null
n=0; for png in "$FR"/cards/*.png; do n=$((n+1)); cp "$png" "$FR/frame-$n.png"; done
rm -rf "$FR/cards"
NOTE="$(basename "$WHEEL"), $(ls "$FR" | wc -l) frames"

# --- the broker (the fleet's TLS Mosquitto with its rules, on the host's loopback) ------------------------
phase "broker: the fleet's Mosquitto (TLS)"
rm -rf "$CACHE/broker"; mkdir -p "$CACHE/broker/data"
hchot provision broker-config --fleet "$F" --out "$CACHE/broker/conf" --port $PORT --bind 127.0.0.1 \
  --persistence-dir "$CACHE/broker/data" --log-dest "file $CACHE/broker/mosquitto.log" --user root >/dev/null
mosquitto -c "$CACHE/broker/conf/mosquitto.conf" >"$CACHE/broker/stderr.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
kill -0 "$BROKER_PID" 2>/dev/null || { cat "$CACHE/broker/stderr.log"; die "mosquitto did not start"; }
NOTE="127.0.0.1:$PORT pid $BROKER_PID"

# --- the real setup script in the arm64 root ------------------------------------------------------------------
phase "setup-terminal.sh in the arm64 root"
mkdir -p "$R/srv/pi-check"; rm -rf "$R/srv/pi-check/frames"; cp -r "$FR" "$R/srv/pi-check/frames"
chmod -R a+rX "$R/srv/pi-check"
rm -rf "$R/root/chot-$DEVICE" "$R/root/chot-$DEVICE.tar.gz"
cp "$BUNDLE" "$R/root/"
rc=0
inroot bash -c "cd /root && tar xzf chot-$DEVICE.tar.gz && ./chot-$DEVICE/setup-terminal.sh" >"$CACHE/setup.log" 2>&1 || rc=$?
grep -v '^\(Get\|Selecting\|Preparing\|Unpacking\|Setting up\|Processing\):\? ' "$CACHE/setup.log" || true
# exit 3: installed, but the self-test failed: accepted only for the clock of an unsynchronised host
[ "$rc" = 0 ] || { [ "$rc" = 3 ] && selftest_ok "$CACHE/setup.log"; } || die "setup-terminal.sh failed in the arm64 root (exit $rc, log: $CACHE/setup.log)"
# what it must have left: the user, its groups, the modes, no key in the bundle
inroot id chot | grep -q '(gpio)' || die "the user chot is not in the group gpio"
inroot id chot | grep -q '(video)' || die "the user chot is not in the group video"
want="640 root:chot /etc/chot/terminal.toml
600 chot:chot /etc/chot/tls/device.key
750 root:chot /etc/chot
700 chot:chot /var/lib/chot
644 root:root /etc/systemd/system/chot-terminal.service"
got="$(inroot stat -c '%a %U:%G %n' /etc/chot/terminal.toml /etc/chot/tls/device.key /etc/chot /var/lib/chot /etc/systemd/system/chot-terminal.service)"
[ "$got" = "$want" ] || die "modes/owners differ: got
$got
want
$want"
# run again with the same wheel and bundle, the script must change nothing (idempotent on a real system)
wheel_sum="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
if [ -f "$CACHE/setup.done" ] && [ "$(cat "$CACHE/setup.done")" = "$wheel_sum" ]; then
  grep -q '^==> nothing changed' "$CACHE/setup.log" || die "a second run of setup-terminal.sh with the same wheel and bundle changed something"
  rerun=" (a second run: nothing changed)"
else
  rerun=""
fi
[ ! -e "$R/root/chot-$DEVICE/tls/device.key" ] && [ ! -e "$R/root/chot-$DEVICE.tar.gz" ] || die "the bundle's key was not removed"
inroot test -L /etc/systemd/system/multi-user.target.wants/chot-terminal.service || die "the unit is not enabled"
grep -q '^include-system-site-packages = true' "$R/opt/chot/venv/pyvenv.cfg" || die "the venv does not see the system's packages"
inroot /opt/chot/venv/bin/python -c 'import lgpio, zxingcpp, cryptography, nacl, msgspec, numpy, PIL, gpiozero, paho.mqtt' \
  || die "a dependency does not import on aarch64"
printf '%s\n' "$wheel_sum" >"$CACHE/setup.done"
NOTE="$(grep -c '^==>' "$CACHE/setup.log") steps; $(inroot /opt/chot/venv/bin/pip list 2>/dev/null | tail -n +3 | wc -l) packages in the venv$rerun"

# --- checks as the service user --------------------------------------------------------------------------------
phase "chot terminal check-config"
aschot /opt/chot/venv/bin/chot terminal check-config /etc/chot/terminal.toml
phase "chot terminal selftest (mock pins)"
aschot /opt/chot/venv/bin/chot terminal selftest --config /etc/chot/terminal.toml | tee "$CACHE/selftest.log" || true
selftest_ok "$CACHE/selftest.log" || die "the self-test failed in the arm64 root"
NOTE="$(grep -c '^PASS' "$CACHE/selftest.log") PASS, $(grep -c '^SKIP' "$CACHE/selftest.log" || true) SKIP, $(grep -c '^FAIL  ' "$CACHE/selftest.log" || true) FAIL (clock: host $HOST_CLOCK)"

phase "systemd-analyze verify (the unit)"
rc=0; inroot systemd-analyze verify /etc/systemd/system/chot-terminal.service >"$CACHE/verify.log" 2>&1 || rc=$?
cat "$CACHE/verify.log"
[ "$rc" = 0 ] || die "systemd-analyze verify found problems in the unit (exit $rc)"
NOTE="clean"

phase "chot scan: arm64 vs x86"
rm -rf "$R/srv/pi-check/photos"; mkdir -p "$R/srv/pi-check/photos"
cp -r "$PHOTOS"/. "$R/srv/pi-check/photos/"; chmod -R a+rX "$R/srv/pi-check/photos"
list="$(cd "$PHOTOS" && find . -name '*.png' | sort)"
# x86: the terminal's own set, made the way setup-terminal.sh makes it (Debian's numpy and pillow, the
# same hashed requirements, the same wheel, no OpenCV): the dev venv has other versions and OpenCV,
# whose resize the decoder's rescue pass prefers (1 of the 119 photos reads only with it)
XV="$CACHE/x86-venv"
for p in python3-venv python3-numpy python3-pil libzbar0; do
  dpkg -s $p >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $p >/dev/null; }
done
xwant="$(sha256sum "$WHEEL" "$WT/provisioning/requirements-terminal.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$XV/stamp" ] || [ "$(cat "$XV/stamp")" != "$xwant" ]; then
  rm -rf "$XV"; /usr/bin/python3 -m venv --system-site-packages "$XV"
  "$XV/bin/pip" install -q --disable-pip-version-check --require-hashes --only-binary=:all: -r "$WT/provisioning/requirements-terminal.txt"
  "$XV/bin/pip" install -q --disable-pip-version-check --no-deps "$WHEEL"
  printf '%s\n' "$xwant" >"$XV/stamp"
fi
(cd "$PHOTOS" && "$XV/bin/chot" scan $list) >"$CACHE/scan-x86.jsonl" 2>"$CACHE/scan-x86.err" || true
inroot bash -c "cd /srv/pi-check/photos && runuser -u chot -- /opt/chot/venv/bin/chot scan $(echo $list)" \
  >"$CACHE/scan-arm64.jsonl" 2>"$CACHE/scan-arm64.err" || true
"$HOSTPY" - "$CACHE/scan-x86.jsonl" "$CACHE/scan-arm64.jsonl" <<'PY'
import json, sys
TIMING = {"ms", "elapsed_ms", "time_ms", "duration_ms", "at", "time", "timing"}
def load(p):
    rows = [json.loads(line) for line in open(p, encoding="utf-8") if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
x86, arm = load(sys.argv[1]), load(sys.argv[2])
if not x86:
    sys.exit("no result on x86")
diff = [(a, b) for a, b in zip(x86, arm) if a != b]
if len(x86) != len(arm) or diff:
    for a, b in diff[:5]:
        print("x86:  ", json.dumps(a, ensure_ascii=False)); print("arm64:", json.dumps(b, ensure_ascii=False))
    sys.exit(f"{len(x86)} results on x86, {len(arm)} on arm64, {len(diff)} differ")
read = sum(1 for r in x86 if r.get("text"))
print(f"{len(x86)} results identical on x86 and arm64 ({read} codes read)")
PY
NOTE="$(wc -l <"$CACHE/scan-x86.jsonl") JSON lines identical"

phase "chot terminal run (frames, mock pins)"
last="$("$HOSTPY" "$WT/tools/pi_check_outbox.py" "$R/var/lib/chot/outbox.db" --last-seq)"
aschot /opt/chot/venv/bin/chot terminal run --config /etc/chot/terminal.toml --max-frames 8 >"$CACHE/run.log" 2>&1 \
  || { tail -30 "$CACHE/run.log"; die "chot terminal run failed in the arm64 root (log: $CACHE/run.log)"; }
cp "$R/var/lib/chot/outbox.db" "$CACHE/outbox.db"
for ext in -wal -shm; do [ -f "$R/var/lib/chot/outbox.db$ext" ] && cp "$R/var/lib/chot/outbox.db$ext" "$CACHE/outbox.db$ext"; done
NOTE="$("$HOSTPY" "$WT/tools/pi_check_outbox.py" "$CACHE/outbox.db" --after "$last" --pass 3 --fail 1)" || { echo "$NOTE"; die "the outbox does not hold the expected events"; }
echo "$NOTE"

# --- systemd as PID 1: the unit started in a booted container --------------------------------------------------
# The root booted with systemd-nspawn -b (systemd under qemu-user): the unit, unchanged but for the
# config it reads (a drop-in: the same frames, looped, so that the daemon keeps running), must reach
# "active (running)" (Type=notify: only after READY=1) and still be running with no restart after
# 75 s, more than twice WatchdogSec=30 (the loop's WATCHDOG=1 pings arrive). A probe unit records
# that, then powers the container off.
boot_key="$(cat "$WHEEL" "$R/etc/systemd/system/chot-terminal.service" "$R/etc/chot/terminal.toml" "$CACHE/rootfs.stamp" | sha256sum | cut -d' ' -f1)"
if [ "${PI_CHECK_BOOT:-1}" = 1 ] && [ -f "$CACHE/boot.stamp" ] && [ "$(head -n1 "$CACHE/boot.stamp")" = "$boot_key" ]; then
  phase "systemd-nspawn -b: READY and watchdog"
  NOTE="cached: passed $(sed -n 2p "$CACHE/boot.stamp") with this wheel, unit, config and root"
elif [ "${PI_CHECK_BOOT:-1}" = 1 ]; then
  phase "systemd-nspawn -b: READY and watchdog"
  rm -f "$CACHE/boot.stamp"
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done; MOUNTS=()
  sed 's/^\(path = "\/srv\/pi-check\/frames"\)$/\1\nloop = true/' "$R/etc/chot/terminal.toml" >"$R/etc/chot/pi-check-boot.toml"
  grep -q '^loop = true' "$R/etc/chot/pi-check-boot.toml" || die "cannot make the looping config for the boot"
  chown --reference="$R/etc/chot/terminal.toml" "$R/etc/chot/pi-check-boot.toml"; chmod 640 "$R/etc/chot/pi-check-boot.toml"
  mkdir -p "$R/etc/systemd/system/chot-terminal.service.d"
  printf '[Service]\nExecStart=\nExecStart=/opt/chot/venv/bin/chot terminal run --config /etc/chot/pi-check-boot.toml\n' \
    >"$R/etc/systemd/system/chot-terminal.service.d/pi-check.conf"
  cat >"$R/etc/systemd/system/pi-check-probe.service" <<'UNIT'
[Unit]
Description=make pi-check: record the terminal's state, then power off
After=chot-terminal.service
[Service]
Type=oneshot
ExecStartPre=/bin/sleep 75
ExecStart=/bin/sh -c 'systemctl show chot-terminal.service -p ActiveState -p SubState -p NRestarts -p WatchdogUSec -p Result -p Type > /var/tmp/pi-check-probe.txt; journalctl -b -u chot-terminal.service --no-pager -o short-monotonic > /var/tmp/pi-check-journal.txt 2>&1'
ExecStartPost=/bin/systemctl --no-block poweroff
[Install]
WantedBy=multi-user.target
UNIT
  ln -sf /etc/systemd/system/pi-check-probe.service "$R/etc/systemd/system/multi-user.target.wants/pi-check-probe.service"
  rm -f "$R/var/tmp/pi-check-probe.txt" "$R/var/tmp/pi-check-journal.txt"
  SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0 timeout 300 systemd-nspawn -q -D "$R" --register=no --keep-unit --console=pipe -b \
    </dev/null >"$CACHE/nspawn.log" 2>&1 || true
  rm -rf "$R/etc/systemd/system/chot-terminal.service.d" "$R/etc/systemd/system/pi-check-probe.service" \
         "$R/etc/systemd/system/multi-user.target.wants/pi-check-probe.service" "$R/etc/chot/pi-check-boot.toml"
  if [ -f "$R/var/tmp/pi-check-probe.txt" ]; then
    cp "$R/var/tmp/pi-check-probe.txt" "$R/var/tmp/pi-check-journal.txt" "$CACHE/"
    cat "$CACHE/pi-check-probe.txt"
    grep -i -E 'ready|watchdog|started|error' "$CACHE/pi-check-journal.txt" | tail -n 8 || true
    for want in ActiveState=active SubState=running NRestarts=0 WatchdogUSec=30s Type=notify; do
      grep -qx "$want" "$CACHE/pi-check-probe.txt" || die "after 75 s under systemd the unit is not $want (see $CACHE/pi-check-probe.txt, $CACHE/pi-check-journal.txt)"
    done
    ! grep -qi 'watchdog timeout' "$CACHE/pi-check-journal.txt" || die "systemd killed the terminal: watchdog timeout"
    NOTE="booted; active (running) after READY, 75 s with WatchdogSec=30, 0 restarts"
    printf '%s\n%s\n' "$boot_key" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$CACHE/boot.stamp"
  elif grep -q 'Welcome to' "$CACHE/nspawn.log"; then
    die "the container booted but the probe left no record (see $CACHE/nspawn.log)"
  else
    NOTE="not bootable here: $(grep -m1 -iE 'fail|error|cannot' "$CACHE/nspawn.log" || tail -n1 "$CACHE/nspawn.log")"
  fi
fi
phase ""
