#!/usr/bin/env bash
# Chot: turn a Raspberry Pi (Raspberry Pi OS) into an enrolled checkpoint terminal.
#
# Run as root with the bundle made by `chot provision device` (unpacked next to this script):
#   tar xzf chot-<id>.tar.gz && sudo ./chot-<id>/setup-terminal.sh [--package WHEEL_OR_DIR]
#
# Steps: Debian packages -> service user -> virtual environment (--system-site-packages, so the
# OS's picamera2, numpy and pillow are seen) -> the pinned dependencies, checked against their
# sha256 (pip --require-hashes, requirements-terminal.txt) -> the chot package itself (--no-deps) ->
# config and credentials under /etc/chot ->
# (and the DCC schemas and value sets, when the bundle has dcc-schema/, dcc-valuesets/) -> the bundle's copy of the device key
# removed -> systemd unit -> self-test -> service enabled and started.
# Idempotent: every file is compared before it is written and every package checked before it
# is installed, so a second run changes nothing. Any failure stops it with a message.
#
# Options:
#   --bundle DIR      the unpacked bundle (default: this script's directory)
#   --package PATH    a chot wheel or source directory to pip install (default: a *.whl in the bundle)
#   --requirements F  the hashed requirements to install first (default: requirements-terminal.txt
#                     in the bundle, else provisioning/requirements-terminal.txt inside the package)
#   --root PREFIX     install under PREFIX instead of / (tests; also env CHOT_ROOT)
#   --dry-run         say what would be done, change nothing (it ends by saying so)
#   --no-selftest     skip the self-test
#   --no-apt          skip the Debian packages (an image that has them)
#   --keep-bundle     keep the bundle's copy of the device key (default: removed once installed,
#                     with chot-<id>.tar.gz next to the bundle or in the current directory)
#   -h, --help
# Environment (tests): CHOT_USER / CHOT_GROUP (service user, default chot), CHOT_ADMIN (owner of
# root's files, default root), CHOT_APT_PACKAGES (the package list), CHOT_SYSTEMD_BOOTED (1 or 0:
# whether systemd runs this system; default: /run/systemd/system exists, as sd_booted(3) checks).
set -euo pipefail

PROG=setup-terminal.sh
BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACKAGE=""
REQUIREMENTS=""
ROOT="${CHOT_ROOT:-}"
DRY_RUN=0
SELFTEST=1
APT=1
KEEP_BUNDLE=0
SVC_USER="${CHOT_USER:-chot}"
SVC_GROUP="${CHOT_GROUP:-$SVC_USER}"
ADMIN="${CHOT_ADMIN:-root}"
# lgpio is not among them: the pinned, hash-checked lgpio wheel in the venv carries its own library
APT_PACKAGES="${CHOT_APT_PACKAGES:-python3 python3-venv python3-pip python3-numpy python3-pil libzbar0 ca-certificates}"
CHANGED=0

say()  { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  {
  printf '%s: ERROR: %s\n' "$PROG" "$*" >&2
  printf '%s: stopped; nothing after this step was done. Fix it and run the script again: it resumes safely.\n' "$PROG" >&2
  trap - ERR
  exit 1
}
trap 'printf "%s: ERROR: unexpected failure at line %s (exit %s); run it again with bash -x to see more\n" "$PROG" "$LINENO" "$?" >&2' ERR

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE="${2:?--bundle needs a directory}"; shift 2 ;;
    --package) PACKAGE="${2:?--package needs a wheel or directory}"; shift 2 ;;
    --requirements) REQUIREMENTS="${2:?--requirements needs a file}"; shift 2 ;;
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-selftest) SELFTEST=0; shift ;;
    --no-apt) APT=0; shift ;;
    --keep-bundle) KEEP_BUNDLE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
ROOT="${ROOT%/}"
if [ "$DRY_RUN" = 1 ]; then
  # the last words of a dry run, however it ends (done, nothing to do, or stopped by an error)
  trap 'printf "==> chạy thử: không có gì bị thay đổi (không ghi hay xoá tệp nào, không cài gói nào, không đụng tới dịch vụ nào)\n==> dry run: nothing was changed (no file written or removed, no package installed, no service touched)\n"' EXIT
fi

ETC="$ROOT/etc/chot"
STATE="$ROOT/var/lib/chot"
OPT="$ROOT/opt/chot"
VENV="$OPT/venv"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT=chot-terminal.service

run() {  # run a command that changes the system, or only say it under --dry-run
  if [ "$DRY_RUN" = 1 ]; then info "would run: $*"; return 0; fi
  info "running: $*"
  "$@"
}

# --- checks -------------------------------------------------------------------------------------
say "checking the bundle in $BUNDLE"
for f in terminal.toml tls/ca.crt tls/device.crt collector.pub collector-seal.pub chot-terminal.service; do
  [ -f "$BUNDLE/$f" ] || die "the bundle lacks $f: unpack the whole chot-<id>.tar.gz made by 'chot provision device' and run the script from it"
done
# the bundle's device key is removed once installed: a later run uses the installed one
if [ ! -f "$BUNDLE/tls/device.key" ] && [ ! -f "$ETC/tls/device.key" ]; then
  die "the bundle lacks tls/device.key and none is installed in $ETC/tls: unpack the whole chot-<id>.tar.gz made by 'chot provision device' (or make it again with 'chot provision bundle ID')"
fi
DEVICE_ID="$(sed -n 's/^id = "\(.*\)"$/\1/p' "$BUNDLE/terminal.toml" | head -n1)"
[ -n "$DEVICE_ID" ] || die "$BUNDLE/terminal.toml has no [device] id: make the bundle again with 'chot provision device'"
info "terminal $DEVICE_ID"
# A handheld scanner or the speaker (docs/terminal.md) needs a few more Debian packages (the venv sees
# the system's site packages, so python3-evdev / python3-serial serve it).
SPEAKER=0
# the Pi camera's stack (libcamera, picamera2) only for scanner.source = "picamera2" (the default): it
# comes from Raspberry Pi OS's own archive, which a plain Debian lacks
if [ -z "${CHOT_APT_PACKAGES:-}" ] && ! grep -Eq '^[[:space:]]*source[[:space:]]*=[[:space:]]*"(usb|files|synthetic|hid|serial)"' "$BUNDLE/terminal.toml"; then
  APT_PACKAGES="$APT_PACKAGES python3-picamera2"
fi
if grep -Eq '^[[:space:]]*source[[:space:]]*=[[:space:]]*"hid"' "$BUNDLE/terminal.toml"; then
  APT_PACKAGES="$APT_PACKAGES python3-evdev"
elif grep -Eq '^[[:space:]]*source[[:space:]]*=[[:space:]]*"serial"' "$BUNDLE/terminal.toml"; then
  APT_PACKAGES="$APT_PACKAGES python3-serial"
fi
if grep -Eq '^[[:space:]]*speaker[[:space:]]*=[[:space:]]*true' "$BUNDLE/terminal.toml"; then
  SPEAKER=1
  APT_PACKAGES="$APT_PACKAGES espeak-ng alsa-utils"
fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ] && [ "$DRY_RUN" = 0 ]; then
  die "run it as root: sudo $0 $*"
fi
if [ -z "$PACKAGE" ]; then
  for w in "$BUNDLE"/*.whl; do [ -f "$w" ] && PACKAGE="$w"; done
fi

# --- 1. Debian packages ---------------------------------------------------------------------------
if [ "$APT" = 1 ]; then
  say "Debian packages: $APT_PACKAGES"
  missing=()
  for p in $APT_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    info "all installed"
  else
    info "missing: ${missing[*]}"
    if [ "$DRY_RUN" = 0 ]; then
      apt-get update -qq || die "apt-get update failed: check the network connection and /etc/apt/sources.list"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed: see the message above (network? disk full? another apt running? 'Unable to locate package python3-picamera2': the camera's packages come from Raspberry Pi OS's archive (archive.raspberrypi.com), so use Raspberry Pi OS 64-bit, or set another scanner.source)"
      CHANGED=1
    else
      info "would run: apt-get update && apt-get install -y ${missing[*]}"
    fi
  fi
else
  say "Debian packages: skipped (--no-apt)"
fi

# --- 2. service user --------------------------------------------------------------------------------
say "service user $SVC_USER"
if getent passwd "$SVC_USER" >/dev/null 2>&1; then
  info "exists"
else
  # Raspberry Pi OS has both groups (its udev rules give /dev/gpiochip* to gpio); a plain Debian lacks gpio
  for g in gpio video; do
    getent group "$g" >/dev/null 2>&1 && continue
    run groupadd --system "$g" || die "groupadd $g failed"
    if [ "$g" = gpio ]; then
      info "(no group gpio: not Raspberry Pi OS? /dev/gpiochip* must belong to it, as Raspberry Pi OS's udev rules make it, or pins.factory = \"lgpio\" fails for $SVC_USER)"
    fi
  done
  run useradd --system --user-group --home-dir /var/lib/chot --no-create-home --shell /usr/sbin/nologin \
      --groups gpio,video "$SVC_USER" || die "useradd $SVC_USER failed (do the groups gpio and video exist? this is meant for Raspberry Pi OS)"
  CHANGED=1
fi

# --- helpers for files --------------------------------------------------------------------------------
ensure_dir() {  # ensure_dir DIR MODE OWNER:GROUP
  local d="$1" mode="$2" owner="$3"
  if [ -d "$d" ] && [ "$(stat -c '%a %U:%G' "$d")" = "$mode $owner" ]; then return 0; fi
  if [ "$DRY_RUN" = 1 ]; then info "would make directory $d ($mode $owner)"; return 0; fi
  mkdir -p "$d" || die "cannot make $d"
  chmod "$mode" "$d" && chown "$owner" "$d" || die "cannot set mode $mode / owner $owner on $d"
  info "directory $d ($mode $owner)"
  CHANGED=1
}

install_file() {  # install_file SRC DEST MODE OWNER:GROUP; writes only when content, mode or owner differ
  local src="$1" dest="$2" mode="$3" owner="$4"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c '%a %U:%G' "$dest")" = "$mode $owner" ]; then
    info "unchanged $dest"
    return 0
  fi
  if [ "$DRY_RUN" = 1 ]; then info "would install $dest ($mode $owner)"; return 0; fi
  local tmp
  tmp="$(mktemp "$(dirname "$dest")/.chot-XXXXXX")" || die "cannot write in $(dirname "$dest")"
  chmod 600 "$tmp"
  cat "$src" >"$tmp" && chown "$owner" "$tmp" && chmod "$mode" "$tmp" && mv -f "$tmp" "$dest" \
    || { rm -f "$tmp"; die "cannot install $dest"; }
  info "installed $dest ($mode $owner)"
  CHANGED=1
  FILE_CHANGED=1
}

# --- 3. virtual environment and the package ------------------------------------------------------------
say "virtual environment $VENV (with the system's site packages, for picamera2 and lgpio)"
ensure_dir "$OPT" 755 "$ADMIN:$ADMIN"
if [ -x "$VENV/bin/python" ] && grep -q '^include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null; then
  info "exists"
else
  run python3 -m venv --system-site-packages "$VENV" || die "python3 -m venv failed: is python3-venv installed?"
  CHANGED=1
fi

say "the chot package and its pinned dependencies"
STAMP="$OPT/installed.sha256"
REQ_INSTALLED="$OPT/requirements-terminal.txt"  # the copy installed from: a record of what is on this terminal
REQ_IN_PACKAGE=provisioning/requirements-terminal.txt
read_requirements() {  # print the hashed requirements: --requirements, the bundle's, or the package's own
  if [ -n "$REQUIREMENTS" ]; then cat -- "$REQUIREMENTS"
  elif [ -f "$BUNDLE/requirements-terminal.txt" ]; then cat -- "$BUNDLE/requirements-terminal.txt"
  elif [ -d "$PACKAGE" ]; then cat -- "$PACKAGE/$REQ_IN_PACKAGE"
  else python3 - "$PACKAGE" "$REQ_IN_PACKAGE" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    sys.stdout.buffer.write(wheel.read(sys.argv[2]))
PY
  fi
}
if [ -n "$PACKAGE" ]; then
  [ -e "$PACKAGE" ] || die "--package $PACKAGE: no such file or directory"
  if [ -d "$PACKAGE" ]; then
    want="$(cd "$PACKAGE" && find . -type f \( -name '*.py' -o -name '*.sh' -o -name '*.toml' -o -name '*.cfg' -o -name '*.service' -o -name '*.txt' \) \
             -not -path './.venv/*' -not -path './.git/*' -not -path './build/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
  else
    want="$(sha256sum "$PACKAGE" | cut -d' ' -f1)"
  fi
  req_text="$(read_requirements 2>/dev/null)" && [ -n "$req_text" ] \
    || die "no hashed requirements for $PACKAGE: it lacks $REQ_IN_PACKAGE (a chot wheel older than this script?); give --requirements requirements-terminal.txt or build the wheel again"
  grep -q -- '--hash=sha256:' <<<"$req_text" || die "the requirements for $PACKAGE carry no --hash=sha256: refusing to install unchecked packages"
  want="$want $(printf '%s\n' "$req_text" | sha256sum | cut -d' ' -f1)"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/chot" ]; then
    info "already installed from this package and these requirements"
  else
    if [ "$DRY_RUN" = 0 ]; then
      printf '%s\n' "$req_text" >"$REQ_INSTALLED.tmp" && mv -f "$REQ_INSTALLED.tmp" "$REQ_INSTALLED" \
        || die "cannot write $REQ_INSTALLED"
    fi
    # every file checked against its sha256; wheels only: no package runs code to build itself here
    run "$VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes --only-binary=:all: -r "$REQ_INSTALLED" \
      || die "pip install --require-hashes -r $REQ_INSTALLED failed: see the message above. 'THESE PACKAGES DO NOT MATCH THE HASHES' means a file is not the one pinned: do not work around it, report it. Otherwise: network? Raspberry Pi OS 64-bit (the pinned wheels are for aarch64 and x86_64, CPython 3.11)?"
    run "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "$PACKAGE" \
      || die "pip install --no-deps $PACKAGE failed: see the message above (a wheel for this Python?)"
    run "$VENV/bin/python" -c "import numpy, PIL" \
      || die "numpy or pillow is missing: they come from the OS (picamera2 is built against them): apt-get install python3-numpy python3-pil, then run the script again"
    if [ "$DRY_RUN" = 0 ]; then printf '%s\n' "$want" >"$STAMP"; fi
    CHANGED=1
  fi
elif [ -x "$VENV/bin/chot" ]; then
  info "installed (no --package given)"
else
  die "chot is not installed and no package was given: add --package chot-*.whl (or a source directory), or make the bundle with --wheel"
fi

# --- 4. config and credentials ----------------------------------------------------------------------------
say "config and credentials in $ETC"
ensure_dir "$ETC" 750 "$ADMIN:$SVC_GROUP"
ensure_dir "$ETC/tls" 750 "$ADMIN:$SVC_GROUP"
ensure_dir "$STATE" 700 "$SVC_USER:$SVC_GROUP"
install_file "$BUNDLE/terminal.toml" "$ETC/terminal.toml" 640 "$ADMIN:$SVC_GROUP"
install_file "$BUNDLE/tls/ca.crt" "$ETC/tls/ca.crt" 644 "$ADMIN:$ADMIN"
install_file "$BUNDLE/tls/device.crt" "$ETC/tls/device.crt" 644 "$ADMIN:$ADMIN"
if [ -f "$BUNDLE/tls/device.key" ]; then
  install_file "$BUNDLE/tls/device.key" "$ETC/tls/device.key" 600 "$SVC_USER:$SVC_GROUP"
else
  info "kept $ETC/tls/device.key (the bundle's copy was removed after an earlier run)"
fi
install_file "$BUNDLE/collector.pub" "$ETC/collector.pub" 644 "$ADMIN:$ADMIN"
install_file "$BUNDLE/collector-seal.pub" "$ETC/collector-seal.pub" 644 "$ADMIN:$ADMIN"
if [ -d "$BUNDLE/trust" ] && [ -n "$(ls -A "$BUNDLE/trust")" ]; then
  ensure_dir "$ETC/trust" 755 "$ADMIN:$ADMIN"
  for t in "$BUNDLE"/trust/*; do
    install_file "$t" "$ETC/trust/$(basename "$t")" 644 "$ADMIN:$ADMIN"
  done
fi
if [ -d "$BUNDLE/dcc-schema" ]; then
  say "EU DCC JSON schemas in $ETC/dcc-schema"
  ensure_dir "$ETC/dcc-schema" 755 "$ADMIN:$ADMIN"
  for v in "$BUNDLE"/dcc-schema/*/; do
    [ -d "$v" ] || continue
    vname="$(basename "$v")"
    ensure_dir "$ETC/dcc-schema/$vname" 755 "$ADMIN:$ADMIN"
    for f in "$v"*.json; do
      [ -f "$f" ] || continue
      install_file "$f" "$ETC/dcc-schema/$vname/$(basename "$f")" 644 "$ADMIN:$ADMIN"
    done
  done
fi
if [ -d "$BUNDLE/dcc-valuesets" ]; then
  say "EU DCC value sets in $ETC/dcc-valuesets"
  ensure_dir "$ETC/dcc-valuesets" 755 "$ADMIN:$ADMIN"
  for f in "$BUNDLE"/dcc-valuesets/*.json; do
    [ -f "$f" ] || continue
    install_file "$f" "$ETC/dcc-valuesets/$(basename "$f")" 644 "$ADMIN:$ADMIN"
  done
fi

if [ "$SPEAKER" = 1 ]; then  # feedback.speaker = true: the Vietnamese prompts, made here once
  VOICE_DIR="$(sed -n 's/^[[:space:]]*voice_dir[[:space:]]*=[[:space:]]*"\(.*\)"[[:space:]]*$/\1/p' "$BUNDLE/terminal.toml" | head -n1)"
  VOICE_DIR="$ROOT${VOICE_DIR:-/var/lib/chot/voice}"
  say "speaker prompts in $VOICE_DIR"
  if [ -f "$VOICE_DIR/pass.wav" ] && [ -f "$VOICE_DIR/fail.wav" ] && [ -f "$VOICE_DIR/guard.wav" ]; then
    info "present (replace them with recorded ones under the same names if you like)"
  else
    run "$VENV/bin/chot" terminal voice --dir "$VOICE_DIR" \
      || die "chot terminal voice failed: see the message above (apt-get install espeak-ng?)"
    CHANGED=1
  fi
fi

# --- the bundle's key material: once installed, it is removed -------------------------------------------
# (the bundle and its tarball hold the terminal's private key in plaintext; /etc/chot/tls has the only copy kept)
say "the bundle's copy of the device key"
leftovers=()
[ -f "$BUNDLE/tls/device.key" ] && leftovers+=("$BUNDLE/tls/device.key")
for t in "$(dirname "$BUNDLE")/chot-$DEVICE_ID.tar.gz" "$PWD/chot-$DEVICE_ID.tar.gz"; do
  [ -f "$t" ] || continue
  case " ${leftovers[*]:-} " in *" $t "*) continue ;; esac
  # only the tarball this key came from: a newer bundle of the same terminal is left alone
  if [ -f "$ETC/tls/device.key" ] && tar -xzOf "$t" "chot-$DEVICE_ID/tls/device.key" 2>/dev/null | cmp -s - "$ETC/tls/device.key"; then
    leftovers+=("$t")
  elif [ "$DRY_RUN" = 1 ]; then
    leftovers+=("$t")
  else
    info "left $t: it holds another key than the one installed (a newer bundle?)"
  fi
done
if [ ${#leftovers[@]} -eq 0 ]; then
  info "none left"
elif [ "$KEEP_BUNDLE" = 1 ]; then
  info "kept (--keep-bundle): ${leftovers[*]}; delete them yourself once the terminal works: they hold its private key"
elif [ "$DRY_RUN" = 1 ]; then
  info "would remove: ${leftovers[*]}"
elif [ -f "$ETC/tls/device.key" ] && { [ ! -f "$BUNDLE/tls/device.key" ] || cmp -s "$BUNDLE/tls/device.key" "$ETC/tls/device.key"; }; then
  for f in "${leftovers[@]}"; do
    if command -v shred >/dev/null 2>&1; then shred -u -- "$f" 2>/dev/null || rm -f -- "$f"; else rm -f -- "$f"; fi
    [ -e "$f" ] && die "cannot remove $f: delete it by hand, it holds the terminal's private key"
    info "removed $f"
  done
  info "(on an SD card or USB stick the blocks may survive deletion: carry bundles on encrypted media)"
else
  die "the installed $ETC/tls/device.key differs from the bundle's: nothing removed; run the script again"
fi

# --- 5. systemd unit -----------------------------------------------------------------------------------------
say "systemd unit $UNIT"
ensure_dir "$UNIT_DIR" 755 "$ADMIN:$ADMIN"
FILE_CHANGED=0
install_file "$BUNDLE/chot-terminal.service" "$UNIT_DIR/$UNIT" 644 "$ADMIN:$ADMIN"
# systemd not running (a chroot, an image being prepared): the unit is enabled offline and starts at
# the next boot; nothing is reloaded, stopped or started
BOOTED="${CHOT_SYSTEMD_BOOTED:-}"
if [ -z "$BOOTED" ]; then if [ -d /run/systemd/system ]; then BOOTED=1; else BOOTED=0; fi; fi
if [ "$FILE_CHANGED" = 1 ] && [ "$BOOTED" = 1 ]; then
  run systemctl daemon-reload || die "systemctl daemon-reload failed"
fi

# --- 6. self-test and start ------------------------------------------------------------------------------------
active=0; enabled=0
systemctl is-active --quiet "$UNIT" 2>/dev/null && active=1
systemctl is-enabled --quiet "$UNIT" 2>/dev/null && enabled=1
if [ "$CHANGED" = 0 ] && [ "$BOOTED" = 0 ] && [ "$enabled" = 1 ]; then
  say "nothing changed and the service is enabled; systemd is not running here (a chroot or an image): it starts at the next boot"
  exit 0
fi
if [ "$CHANGED" = 0 ] && [ "$active" = 1 ] && [ "$enabled" = 1 ]; then
  say "nothing changed and the terminal is running: done"
  info "to test it again: systemctl stop $UNIT; sudo -u $SVC_USER $VENV/bin/chot terminal selftest --config /etc/chot/terminal.toml; systemctl start $UNIT"
  exit 0
fi

selftest_rc=0
if [ "$SELFTEST" = 1 ]; then
  say "self-test (the service is stopped meanwhile: the camera and pins serve one process)"
  if [ "$active" = 1 ]; then run systemctl stop "$UNIT" || die "systemctl stop $UNIT failed"; fi
  if [ "$DRY_RUN" = 1 ]; then
    info "would run: $VENV/bin/chot terminal selftest --config /etc/chot/terminal.toml (as $SVC_USER)"
  else
    if [ -z "$ROOT" ] && command -v runuser >/dev/null 2>&1; then
      (cd "$STATE" && runuser -u "$SVC_USER" -- "$VENV/bin/chot" terminal selftest --config "$ETC/terminal.toml") || selftest_rc=$?
    else
      (cd "$STATE" && "$VENV/bin/chot" terminal selftest --config "$ETC/terminal.toml") || selftest_rc=$?
    fi
  fi
else
  say "self-test: skipped (--no-selftest)"
fi

if [ "$BOOTED" = 0 ]; then
  say "service $UNIT: enable (systemd is not running here, a chroot or an image: it starts at the next boot)"
  if [ "$enabled" = 0 ]; then run systemctl enable "$UNIT" || die "systemctl enable $UNIT failed"; fi
else
  say "service $UNIT: enable and start"
  if [ "$enabled" = 0 ]; then run systemctl enable "$UNIT" || die "systemctl enable $UNIT failed"; fi
  run systemctl restart "$UNIT" || die "systemctl restart $UNIT failed: see journalctl -u $UNIT"
fi

if [ "$selftest_rc" != 0 ] && [ "$BOOTED" = 0 ]; then
  printf '%s: the terminal is installed and enabled (it starts at the next boot), but the self-test FAILED (see above): fix each item and run: %s terminal selftest --config /etc/chot/terminal.toml\n' "$PROG" "$VENV/bin/chot" >&2
  exit 3
fi
if [ "$selftest_rc" != 0 ]; then
  printf '%s: the terminal is installed and running, but the self-test FAILED (see above): fix each item and run: %s terminal selftest --config /etc/chot/terminal.toml\n' "$PROG" "$VENV/bin/chot" >&2
  exit 3
fi
if [ "$BOOTED" = 0 ]; then
  say "done: terminal $DEVICE_ID is installed and enabled; it starts at the next boot (then: journalctl -u $UNIT -f)"
else
  say "done: terminal $DEVICE_ID is installed and running (journalctl -u $UNIT -f)"
fi
