# Two commands for a new user on a fresh Debian machine (as root or with sudo):
#   make demo   runs the whole system locally
#   make test   runs the tests
# Each installs what it needs by itself and does nothing twice.

PY      ?= python3
VENV    := .venv
STAMPS  := .make-stamps
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := mosquitto mosquitto-clients libzbar0 python3-venv openssl sqlite3 systemd chromium \
            espeak-ng alsa-utils linux-libc-dev gcc python3-dev
DURATION ?= 30

.PHONY: demo test lint bench clean deps faults pi-check

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "==> Debian packages present"; fi
	@touch $@

$(STAMPS)/venv: setup.py $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	@[ -x $(VENV)/bin/python ] || { echo "==> creating $(VENV)"; $(PY) -m venv $(VENV); }
	@echo "==> installing chot and its test tools into $(VENV)"
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -e '.[test,usb,postgres]'
	@touch $@

deps: $(STAMPS)/venv

test: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -rs --durations=25 $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check .

demo: deps
	$(VENV)/bin/chot demo --duration $(DURATION)

bench: deps
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# The fault-injection suite (docs/reliability.md): real Mosquitto, a private PostgreSQL it starts
# itself, collectors and terminals as processes. FAULTS_ARGS=--quick / --smoke / --seed N / --only ...
FAULTS_APT := postgresql faketime
$(STAMPS)/faults-apt: $(STAMPS)/apt
	@missing=""; for p in $(FAULTS_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing \
	  || echo "==> could not install$$missing: the suite says what it skips"; \
	fi
	@touch $@

# The terminal on a Pi's OS and CPU (docs/provisioning.md, "Checked on arm64"): a Debian bookworm
# arm64 root (debootstrap, qemu-user-static), the real setup-terminal.sh run in it, then check-config,
# selftest, scan (compared with x86) and a short run inside it. Not in `make test`. Root, fleet and
# wheel cached in PI_CHECK_DIR (default /var/tmp/chot-pi-check): a second run is quick.
# PI_CHECK_PY=... a Python with chot's deps instead of .venv's; PI_CHECK_FRESH=1 rebuilds the root.
PI_CHECK_PY ?= $(VENV)/bin/python
pi-check:
	@[ "$(PI_CHECK_PY)" != "$(VENV)/bin/python" ] || $(MAKE) --no-print-directory deps
	PI_CHECK_PY=$(PI_CHECK_PY) bash tools/pi_check.sh

faults: deps $(STAMPS)/faults-apt
	$(VENV)/bin/python -m faults.run $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) $(STAMPS) build *.egg-info
