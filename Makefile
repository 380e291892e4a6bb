# backup-manager: every target sets up what it needs on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?= ./data

.PHONY: run test lint bench clean sysdeps css webdeps dist

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/backup-manager serve --host 127.0.0.1 --port 8080 --data $(DATA)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The engines run the real rsync and restic, the browser tests drive the system Chromium
# (never a downloaded one), and the web assets are built with node/npm; install them from
# the system packages when missing (CI runs as root; elsewhere this needs sudo rights).
# Each entry is command:apt-package (the names differ for some tools).
SYSTEM_TOOLS := rsync:rsync restic:restic zstd:zstd chromium:chromium node:nodejs npm:npm \
	nginx:nginx systemd-analyze:systemd openssl:openssl setfacl:acl
sysdeps:
	@missing=""; for t in $(SYSTEM_TOOLS); do \
	  command -v "$${t%%:*}" >/dev/null || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The front end (Tailwind CSS, htmx) is built ahead of time into web/static/ and
# committed, so `make run` never needs Node. `make css` rebuilds it; the tests check
# that the committed files match a fresh build and run axe-core from web/node_modules.
WEB_STAMP := web/node_modules/.installed-stamp
$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm install --no-save --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

webdeps: $(WEB_STAMP)

css: $(WEB_STAMP)
	cd web && npm run --silent build

test: lint sysdeps webdeps
	$(BIN)/python -m pytest -q

# One executable carrying Python, the dependencies, the templates and the static files
# (PyInstaller one-file). Rebuilt only when a source file changed since the last build.
DIST_SOURCES := $(shell find server core engines storage events models packaging \
	web/templates web/static -type f -not -path '*/__pycache__/*') pyproject.toml
dist: dist/backup-manager
dist/backup-manager: $(STAMP) $(DIST_SOURCES)
	$(BIN)/pyinstaller --noconfirm --log-level WARN --distpath dist \
	  --workpath build/pyinstaller packaging/backup-manager.spec
	@touch $@

bench: $(STAMP) sysdeps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
