# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
# Nothing in the demo or the tests may reach a model hub.
export HF_HUB_OFFLINE := 1

.PHONY: install demo test bench notebooks clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) -m tutorial_lib run

# nbval reads a kernel's output only after each cell has finished; a cell that sends more messages than ZeroMQ buffers
# (progress bars of minutes-long training) loses its last ones, and nbval fails with "Timeout of 5 seconds exceeded
# waiting for output" (seen once on notebook 04). Progress bars that redraw at most every 2 s keep far below that.
test: install
	TUTORIAL_LIB_PROGRESS=text TQDM_MININTERVAL=2 $(PY) -m pytest tests notebooks --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

# Benchmarks (not part of `make test`): writes outputs/bench.json and outputs/bench.md; see benchmarks/README.md.
# Pass options with BENCH_ARGS, e.g. make bench BENCH_ARGS="--skip-demo --budget-s 900".
bench: install
	$(PY) -m tutorial_lib bench $(BENCH_ARGS)

# Re-execute the committed notebooks in place, top to bottom on a fresh kernel (their outputs are checked by nbval).
# Progress bars are plain text there (tutorial_lib/progress.py): a stored widget shows as a frozen bar in JupyterLab.
notebooks: install
	cd notebooks && export TUTORIAL_LIB_PROGRESS=text && for nb in [0-9][0-9]_*.ipynb; do \
		../$(PY) -m jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=1800 \
			--ExecutePreprocessor.store_widget_state=False "$$nb" || exit 1; \
	done

clean:
	rm -rf outputs .pytest_cache
