# The README's two commands: `make demo` and `make test`. Each does its own set-up
# (Debian packages, the virtual environment, the base image) and may be run again.

VENV := .venv
PY := $(VENV)/bin/python
ORCH := $(VENV)/bin/orch
STAMP := $(VENV)/.installed

.PHONY: demo test unit lint setup host clean-demo bench density

setup: host $(STAMP)

# Every time: it installs only what is missing, and starts libvirtd where nothing did.
host:
	./scripts/setup-host

$(STAMP): pyproject.toml constraints.txt | host
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	@if $(ORCH) show demo >/dev/null 2>&1; then \
		$(ORCH) start demo; \
	else \
		$(ORCH) create-tenant demo --hostname demo.example.test; \
	fi
	@echo "--- curl -H 'Host: demo.example.test' http://127.0.0.1/hello"
	@curl -sS --fail -H 'Host: demo.example.test' http://127.0.0.1/hello
	@$(ORCH) show demo

test: setup
	$(VENV)/bin/ruff check orchestrator tests bench inventory
	$(VENV)/bin/pytest -ra tests

unit: setup
	$(VENV)/bin/pytest -ra tests/unit

bench: setup
	$(PY) bench/create.py --kvm

density: setup
	$(PY) bench/density.py
