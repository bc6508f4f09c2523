# The two commands (see README): `make demo` runs the main job on the embedded default model and the shipped
# data; `make test` runs the whole test suite. Both create/refresh a local venv from scratch as needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rgd-installed

.PHONY: install demo test clean

$(STAMP): setup.py build_ext.py $(wildcard csrc/*/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# The CPU wheel of torch lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	# Build requirements of the C++ extension (built against the installed torch, hence no build isolation).
	$(PY) -m pip install "setuptools>=69" wheel pybind11 ninja
	$(PY) -m pip install --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rgd-eval run --model demo --output-dir runs/demo
	$(VENV)/bin/rgd-generate --model demo --heads runs/demo/heads/per-user.safetensors --user u02 -k 10 -w 1 \
		--stop "\n" --max-new-tokens 24 --prompt "$$(printf 'Generate a headline for the following article: The city council approved a new budget for parks and schools.\nHeadline:')"

test: $(STAMP)
	RGD_REQUIRE_EXT=1 $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info rgd_engine/*.so
