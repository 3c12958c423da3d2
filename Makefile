# Every workflow of the repository, for people and CI alike (.ci/run calls `make test`).
# `make` alone lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Targets run in the order given (test: cheap checks first), also under `make -j`.
.NOTPARALLEL:

PYTHON ?= python3
VENV := $(CURDIR)/.venv
VENV_STAMP := $(VENV)/.requirements-installed
# Tools installed into .venv/ (ansible-playbook, molecule, ...) come first on PATH, so
# molecule and ansible find each other there.
export PATH := $(VENV)/bin:$(PATH)
# Image the lab and molecule containers run: <LAB_IMAGE>:latest. A name outside
# localhost/ is pulled instead of built (see scripts/lab/build-image.sh).
export LAB_IMAGE ?= localhost/llmgw-debian13-systemd
# podman cannot give a container limits above its own hard limits (it lowers its nproc
# to 32768), so the lab and molecule containers get the host's values, capped.
export LAB_NOFILE := $(shell n=$$(ulimit -Hn); [[ $$n == unlimited ]] && n=1048576; echo $$n)
export LAB_NPROC := $(shell n=$$(ulimit -Hu); [[ $$n == unlimited || $$n -gt 32768 ]] && n=32768; echo $$n)
LAB_CREDENTIALS := $(CURDIR)/.lab/credentials
GATEWAY_URL := https://127.0.0.1:4000
# The lab's CA, which signs the balancer's HTTPS certificate (role pki).
LAB_CA := .lab/pki/ca.crt
LAB_MODEL := fake-gpt
# evidence.yml writes evidence/<environment>/<UTC timestamp>/.
EVIDENCE_DIR := $(CURDIR)/evidence/lab
INVENTORIES := lab staging production bookworm-check
# Pythons of the gateway hosts the release artifact is built for (Debian 13: 3.13,
# Ubuntu 24.04: 3.12); `make wheelhouse TARGET_PYTHONS="3.12 3.13"` for both.
TARGET_PYTHONS ?= 3.13

.PHONY: help host-deps venv wheelhouse image lab-hosts lab lab-info lab-down lint syntax unit-test tests-beside-molecule \
	app-test check-bookworm molecule evidence bench test

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

host-deps: ## Install the host's apt packages and configure podman (root, idempotent)
	scripts/lab/host-deps.sh

venv: $(VENV_STAMP) ## Controller tools in .venv/ from requirements/controller.txt

$(VENV_STAMP): requirements/controller.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/controller.txt
	touch $@

image: host-deps ## Build the Debian 13 systemd image unless its recipe is unchanged
	scripts/lab/build-image.sh

wheelhouse: venv ## Build the release artifact build/llm-gateway-<version>-py<XY>-<arch>.tar from the commit
	PYTHON=$(VENV)/bin/python scripts/build-release.sh $(TARGET_PYTHONS)

lab-hosts: host-deps venv image ## Start the lab containers lab-lb, lab-gateway1, lab-gateway2, lab-db and lab-backup
	ansible-playbook -i inventory/lab lab_up.yml

# site.yml and evidence.yml in one ansible-playbook run: one start-up (inventory, variables,
# plugins) less, and evidence.yml still runs only when site.yml succeeded.
lab: lab-hosts wheelhouse ## The whole lab: hosts, site.yml, evidence; prints how to use it
	ansible-playbook -i inventory/lab site.yml evidence.yml
	$(MAKE) --no-print-directory lab-info

lab-info: ## Print the lab's gateway URL, a chat call to paste and where the evidence is
	@echo
	@echo "Gateway: $(GATEWAY_URL)"
	@echo "Chat call:"
	@echo "  curl -sS --cacert $(LAB_CA) $(GATEWAY_URL)/v1/chat/completions \\"
	@echo "    -H \"Authorization: Bearer \$$(cat $(LAB_CREDENTIALS)/gateway_master_key)\" \\"
	@echo "    -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\": \"$(LAB_MODEL)\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'"
	@echo "Lab secrets: $(LAB_CREDENTIALS)/"
	@latest=$$(ls -1d $(EVIDENCE_DIR)/*Z/ 2>/dev/null | tail -n 1 || true); \
	echo "Evidence: $${latest:-none yet (make evidence)}"

lab-down: venv ## Remove the lab containers and their network
	ansible-playbook -i inventory/lab lab_down.yml

evidence: venv ## Collect the lab's evidence bundle (evidence.yml)
	ansible-playbook -i inventory/lab evidence.yml

lint: venv ## yamllint, ansible-lint (profile production), ruff
	yamllint --strict .
	ansible-lint
	ruff check tests molecule roles scripts
	ruff format --check tests molecule roles scripts
	$(MAKE) -C app lint

syntax: venv ## Syntax-check every entry point against every inventory (no connections)
	for inventory in $(INVENTORIES); do \
		ansible-inventory -i inventory/$$inventory --graph; \
		for playbook in *.yml; do \
			echo "syntax: $$playbook -i inventory/$$inventory"; \
			ansible-playbook -i inventory/$$inventory --syntax-check $$playbook >/dev/null; \
		done; \
	done

unit-test: venv ## Controller-side tests (tests/): evidence judgement, role guards, the controller steps unprivileged
	pytest tests

check-bookworm: host-deps venv ## Dry-run database.yml on a bare Debian 12 container: ends ok, says what it would install
	scripts/lab/check-bookworm.sh

app-test: ## The app's own tests (app/Makefile)
	$(MAKE) -C app venv test

molecule: host-deps venv image wheelhouse ## molecule test: create, converge, idempotence, verify, destroy
	molecule test

bench: ## The app's benchmark (app/Makefile)
	$(MAKE) -C app bench

test: host-deps venv lint syntax ## Everything CI runs: the checks, then molecule beside the other tests
	@# The molecule scenario (mostly waiting on its hosts while it creates and converges
	@# them) runs beside the controller, bookworm and app tests, which end before its
	@# verify step puts load on the machine. Two processes, since targets here run one at
	@# a time (.NOTPARALLEL); the other tests' output is printed once both have ended.
	@log=$$(mktemp); \
	$(MAKE) --no-print-directory tests-beside-molecule >"$$log" 2>&1 & beside=$$!; \
	status=0; $(MAKE) --no-print-directory molecule || status=$$?; \
	wait "$$beside" || status=$$((status ? status : 1)); \
	echo "--- unit-test, check-bookworm, app-test (run beside molecule) ---"; \
	cat "$$log"; rm -f "$$log"; \
	exit "$$status"

tests-beside-molecule: unit-test check-bookworm app-test
