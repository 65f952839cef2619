# weightspace — the README's verbs. Needs only Python >= 3.11 and make.
#   make reproduce   the `default` reproduction: every notebook, figures/ and results/  (creates .venv)
#   make test        the whole test suite, notebooks included at the `tiny` preset     (creates .venv)
#   make lab         JupyterLab on the notebooks
#   make site        a static HTML copy of the last run (PRESET=default): notebooks with outputs, the gallery
#   make tiny        the whole pipeline at the `tiny` preset (a few minutes), into runs/tiny
#   make bench       the speed benchmarks (ratios of two implementations on the same input)
#   make profile     the floor table: each expensive stage against this machine's peak (results/profile.json, README)
#   make nbclean     store notebooks without outputs
#   make constraints record this venv's versions in constraints.txt (what made the committed figures)
#   make sync        pair each notebook with its py:percent script, from the .ipynb (FROM=py: from the .py)
#   make assignments the students' copies of the course assignments, from their solutions

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= default
FROM   ?= ipynb
# notebooks run at once by `make reproduce` / `make tiny`, in the order of what they read (PARALLEL=1: one by one)
PARALLEL ?= 2
# installs are pinned to the versions that made the committed figures; UNPINNED=1 takes the newest allowed
CONSTRAINTS ?= constraints.txt
PINS   := $(if $(UNPINNED),,$(wildcard $(CONSTRAINTS)))
PIN    := $(if $(PINS),-c $(PINS))

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup setup-dev reproduce test tiny lab site bench profile nbclean params sync assignments constraints clean

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "weightspace needs Python >= 3.11, this is " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# each stamp is redone when pyproject.toml changes
$(VENV)/.installed: pyproject.toml $(PINS) | $(PY)
	$(PY) -m pip install --quiet $(PIN) -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(PINS) | $(PY)
	$(PY) -m pip install --quiet $(PIN) -e '.[dev]'
	@touch $@ $(VENV)/.installed

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

reproduce: setup
	$(PY) -m weightspace reproduce --preset $(PRESET) --parallel $(PARALLEL)

tiny: setup
	$(PY) -m weightspace reproduce --preset tiny --parallel $(PARALLEL)

test: setup-dev
	$(PY) -m pytest

LAB_PORT ?= 8888
lab: setup
	@echo "JupyterLab on http://localhost:$(LAB_PORT)/lab (the token is in the URL it prints below; Ctrl-C stops it)"
	$(VENV)/bin/jupyter lab --no-browser --port=$(LAB_PORT) --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

site: setup
	$(PY) -m weightspace site --preset $(PRESET)

bench: setup-dev
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

profile: setup
	$(PY) benchmarks/floor.py --out results/profile.json --readme README.md

nbclean: setup-dev
	$(PY) tools/nbclean.py $$(find notebooks -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*')

# every installed distribution but this package and the CUDA runtime wheels torch picks for its platform
constraints: setup-dev
	@{ echo "# pip constraints: the versions that made the committed figures and results (make constraints)."; \
	   echo "# Used by make setup/test/reproduce; UNPINNED=1 make ... installs without them."; \
	   $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(nvidia-|triton==|weightspace)'; } > $(CONSTRAINTS)
	@echo "wrote $(CONSTRAINTS): $$(grep -c '==' $(CONSTRAINTS)) pinned distributions"

# give every notebook parameter a type papermill shows (--help-notebook) and checks, then re-pair
params: setup
	$(PY) tools/nbparams.py && $(PY) tools/nbsync.py --from py

sync: setup
	$(PY) tools/nbsync.py --from $(FROM)

assignments: setup-dev
	$(PY) tools/assignments.py

clean:
	rm -rf runs .pytest_cache
