# Two commands set everything up on a fresh machine: `make app` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
CHECKPOINTS ?= checkpoints
PORT ?= 8501

.PHONY: install app test test-fast lint browser bench demo-runs study soak clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

## Start the explorer (installs first if needed).
app: install
	$(PY) -m streamlit run app/main.py --server.port $(PORT) --browser.gatherUsageStats false -- --checkpoints-dir $(CHECKPOINTS)

## Install, then run the whole test suite (the browser test needs Debian's chromium; installed here when missing).
test: install browser
	$(PY) -m pytest -q

## The inner loop while developing: everything but the tests marked `slow` (fault matrix, browser, torchrun,
## real UMAP, sweeps over every bundled or hostile run, real trainer processes): about a minute on two idle cores.
test-fast: install
	$(PY) -m pytest -q -m "not slow and not soak"

## House style: pycodestyle, pyflakes, import order and bugbear (ruff.toml).
lint: install
	$(PY) -m ruff check .

## Debian's Chromium for the real-browser test (never Playwright's own download).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium is not installed and apt-get is not possible here: the browser test will be skipped"; }

## All performance figures of the README (several minutes; run on an otherwise idle machine).
bench: install browser
	$(PY) -m bench

## Retrain the bundled demo runs into checkpoints/ (about 10 minutes on 2 CPU cores).
demo-runs: install
	$(PY) -m trainer.demo --force

## The latent-size study: sweep, run folders in checkpoints/study/, report in reports/latent-size-study/.
study: install
	$(PY) -m trainer.study

## The long fault-injection soak (300 random SIGKILLs, 5,000 racing loads; about 10 minutes).
soak: install
	$(PY) -m pytest -q -m soak tests/test_faults.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
