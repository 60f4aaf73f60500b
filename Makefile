# Two entry points (see README): `make pipeline` and `make test`. Both set up .venv first.
# Bytecode is compiled at install: every `nbp run` is a new process (and so is its kernel),
# and where PYTHONDONTWRITEBYTECODE is set (as on our CI machines) Python would otherwise
# compile jupyter/papermill/IPython from source each time, ~1.5 s per stage.
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup pipeline test bench check

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[dev]'
	$(PY) -m compileall -q nbpipeline
	# an editable install skips pyproject's data-files: enable the Jupyter save hook here
	install -D -m 644 jupyter-config/jupyter_server_config.d/nbpipeline.json \
		$(VENV)/etc/jupyter/jupyter_server_config.d/nbpipeline.json
	touch $@

setup: $(VENV)/.installed

pipeline: setup  ## run the example pipeline end to end with DVC
	dvc repro

test: setup  ## the whole test suite (what CI runs)
	python -m pytest

bench: setup  ## notebooks-vs-scripts benchmark
	python bench/pipeline.py
