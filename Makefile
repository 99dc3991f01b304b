# Two commands do all the set-up on a fresh Debian 12 machine (as root):
#   make demo   suites against a throwaway Dovecot, reports in reports/demo/
#   make test   the harness's own tests
# Both install what they need (apt packages, a venv) and are safe to run twice.

VENV ?= .venv
PY := $(VENV)/bin/python
# The venv's interpreter: the system's /usr/bin/python3 when there is one (Debian 12: 3.11, built with PGO and LTO;
# a pyenv or other `python3` first on PATH may be built without them, and the load generator then does up to a
# seventh fewer commands per CPU-second), else whatever `python3` is. `make setup PYTHON=...` to choose.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
# A venv made from another interpreter than PYTHON (an older checkout's, or PYTHON given) is made again.
VENV_BASE := $(shell test -x $(PY) && $(PY) -c 'import sys; print(sys.base_prefix)' 2>/dev/null)
WANT_BASE := $(shell $(PYTHON) -c 'import sys; print(sys.base_prefix)' 2>/dev/null)
ifneq ($(VENV_BASE),$(WANT_BASE))
VENV_STALE := venv-stale
endif
APT_PACKAGES := dovecot-imapd dovecot-pop3d dovecot-lmtpd
TEST_APT_PACKAGES := chromium
PYTEST_WORKERS ?= 2

.PHONY: venv-stale apt-python-venv apt-dovecot apt-cyrus apt-mailutils setup setup-test demo test test-fast lint bench load-demo clean

setup: $(VENV)/.installed apt-dovecot
	@# Bytecode for the harness, as pip writes it for a regular install: an editable install gets none, and
	@# where PYTHONDONTWRITEBYTECODE is set every mailharness process (and xdist worker) compiled it again.
	@$(PY) -m compileall -q harness

$(VENV)/.installed: pyproject.toml $(VENV_STALE) | apt-python-venv
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# apt-get only when a package is missing, so a second run is quick and offline-safe.
# Debian's python3 makes venvs only with python3-venv (ensurepip), which a fresh Debian 12 lacks.
venv-stale: ;

apt-python-venv:
	@if [ "$(PYTHON)" = /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	fi

apt-dovecot:
	@if ! command -v dovecot >/dev/null 2>&1 && ! test -x /usr/sbin/dovecot; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

# Cyrus IMAP 3.6 for `--server cyrus`: support packages from apt, cyrus-imapd/cyrus-pop3d unpacked
# into /opt/mailharness/cyrus (they conflict with dovecot-imapd). A no-op once in place.
apt-cyrus:
	@sh harness/targets/install-cyrus.sh

# GNU Mailutils for the managed "mailutils" target (tests run the suites against it).
apt-mailutils:
	@sh harness/targets/install-mailutils.sh

setup-test: setup apt-cyrus apt-mailutils
	@if ! command -v chromium >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_APT_PACKAGES); \
	fi

demo: setup
	$(VENV)/bin/mailharness run --report-dir reports/demo -n $(PYTEST_WORKERS)

test: setup-test
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

test-fast: setup-test
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow" tests

load-demo: setup
	$(VENV)/bin/mailharness load --scenario term-start --users 100 --spawn-rate 20 --run-time 1m --report-dir reports/load-demo

lint: setup
	$(VENV)/bin/ruff check harness tests loadtests

bench: setup
	$(VENV)/bin/mailharness bench

clean:
	rm -rf $(VENV) reports/demo .pytest_cache
