# One entry point for building, linting and testing. `make test` is THE test
# command (lint + pytest + molecule); it installs what it needs (.venv, the
# test node image) on a machine that has the system packages (.ci/run installs
# them: docker.io, mmdebstrap, python3-venv, git, make).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.requirements-dev.stamp
REQUIREMENTS := requirements-dev.txt

# Tools from the venv come first (molecule and ansible-lint run ansible-* by name).
RUN := env PATH="$(BIN):$$PATH"

# Molecule scenarios: every molecule/<name>/molecule.yml, or as given,
# e.g. `make molecule SCENARIOS="default executor"`.
SCENARIOS ?= $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))

# Python that runs on the GitLab host (the hook and the role's helpers) must
# stay Python 3.6-compatible.
VERMIN_PATHS ?= files/ $(wildcard roles/*/files/)

# A scenario that runs longer than this (seconds) is stopped and counts as failed.
MOLECULE_TIMEOUT ?= 1800

# Containers the project makes carry this label (set on the image, inherited).
PROJECT_LABEL := org.codo.project=codo-hooks

.PHONY: help venv image lint pytest molecule test demo clean-containers clean

help:
	@echo "make venv              create/update .venv from $(REQUIREMENTS)"
	@echo "make image             build the test node image (codo-hooks-node:test)"
	@echo "make lint              yamllint, ansible-lint, ruff, vermin"
	@echo "make pytest            unit and integration tests (tests/)"
	@echo "make molecule          Molecule scenarios: $(SCENARIOS)"
	@echo "make test              lint + pytest + molecule"
	@echo "make demo              scripts/demo.sh"
	@echo "make clean-containers  remove the containers made from the project's image"

venv: $(STAMP)

# Reinstall only when the requirements file changed since the last install.
$(STAMP): $(REQUIREMENTS)
	@if ! "$(BIN)/python" -c '' 2>/dev/null; then \
	    echo "creating $(VENV) with $$(command -v $(PYTHON))"; \
	    rm -rf "$(VENV)"; \
	    $(PYTHON) -m venv "$(VENV)"; \
	fi
	"$(BIN)/python" -m pip install --disable-pip-version-check -qq -r $(REQUIREMENTS)
	@touch "$@"

image:
	@docker info >/dev/null 2>&1 || { echo "make image: the docker engine is not running (start dockerd)" >&2; exit 1; }
	bash molecule/image/build.sh

# Runs every linter even when one fails, then fails if any did.
lint: venv
	@failed=""; \
	run() { echo "=== lint: $$*"; $(RUN) "$$@" || failed="$$failed $$1"; }; \
	run yamllint .; \
	run ansible-lint; \
	run ruff check .; \
	run vermin --target=3.6- --no-tips --violations $(VERMIN_PATHS); \
	if [ -n "$$failed" ]; then echo "lint failed:$$failed"; exit 1; fi; \
	echo "lint: all passed"

# Exit code 5 (no tests collected) is not a failure while tests/ is being written.
pytest: venv
	@if [ ! -d tests ]; then echo "pytest: no tests/ directory, skipped"; exit 0; fi; \
	rc=0; $(RUN) pytest tests || rc=$$?; \
	if [ $$rc = 5 ]; then echo "pytest: no tests collected"; rc=0; fi; \
	exit $$rc

# Runs every scenario even when one fails, then fails if any did.
molecule: venv image
	@if [ -z "$(strip $(SCENARIOS))" ]; then echo "molecule: no scenario found, skipped"; exit 0; fi; \
	passed=0; failed=0; failures=""; \
	for s in $(SCENARIOS); do \
	    echo "=== molecule test -s $$s"; \
	    start=$$(date +%s); \
	    if $(RUN) timeout -k 30 $(MOLECULE_TIMEOUT) molecule test -s "$$s"; then passed=$$((passed+1)); r=passed; \
	    else failed=$$((failed+1)); failures="$$failures $$s"; r=FAILED; fi; \
	    echo "=== molecule scenario $$s $$r in $$(( $$(date +%s) - start )) s"; \
	done; \
	[ -z "$$failures" ] || echo "failed scenarios:$$failures"; \
	echo "molecule: $$passed passed, $$failed failed"; \
	[ $$failed = 0 ]

test: lint pytest molecule

demo: venv image
	@[ -f scripts/demo.sh ] || { echo "make demo: scripts/demo.sh is not written yet" >&2; exit 1; }
	$(RUN) bash scripts/demo.sh

clean-containers:
	@ids=$$(docker ps -aq --filter "label=$(PROJECT_LABEL)"); \
	if [ -n "$$ids" ]; then docker rm -f $$ids; else echo "no project containers"; fi

clean:
	rm -rf "$(VENV)" .pytest_cache .ruff_cache
