# weightspace — the README's verbs. Needs only Python >= 3.10 (3.11 tested) and make.
#   make reproduce   the `default` reproduction: every notebook, figures/ and results/  (creates .venv)
#   make test        the whole test suite, notebooks included at the `tiny` preset     (creates .venv)
#   make lab         JupyterLab on the notebooks
#   make tiny        the whole pipeline at the `tiny` preset (a few minutes), into runs/tiny
#   make bench       the speed benchmarks (ratios of two implementations on the same input)
#   make profile     the floor table: each expensive stage against this machine's peak (results/profile.json, README)
#   make nbclean     store notebooks without outputs
#   make sync        pair each notebook with its py:percent script, from the .ipynb (FROM=py: from the .py)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= default
FROM   ?= ipynb

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup setup-dev reproduce test tiny lab bench profile nbclean sync clean

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "weightspace needs Python >= 3.10, this is " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# each stamp is redone when pyproject.toml changes
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

reproduce: setup
	$(PY) -m weightspace reproduce --preset $(PRESET)

tiny: setup
	$(PY) -m weightspace reproduce --preset tiny

test: setup-dev
	$(PY) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: setup-dev
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

profile: setup
	$(PY) benchmarks/floor.py --out results/profile.json --readme README.md

nbclean: setup-dev
	$(PY) tools/nbclean.py $$(find notebooks -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*')

sync: setup
	$(PY) tools/nbsync.py --from $(FROM)

clean:
	rm -rf runs .pytest_cache
