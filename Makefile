# cxrtl: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out

.PHONY: install demo test test-fast test-latest latest-venv bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

# The main job on the embedded default: synthesise both datasets, reproduce the paper's three experiments
# at the quick profile (random init when ImageNet weights cannot be had), print where the report is.
demo: $(STAMP)
	$(PY) -m cxrtl data synth $(DEMO)/data
	$(PY) -m cxrtl reproduce --profile quick --allow-random-init \
		--covid $(DEMO)/data/COVID-19_Radiography_Dataset --pneumonia $(DEMO)/data/chest_xray \
		--out $(DEMO)/reproduction --cache-dir $(DEMO)/cache

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)      # everything but the few end-to-end tests marked slow
	$(PY) -m pytest -q -m "not slow"

# The optional parts against today's newest releases (hub, mlflow, serve, dicom, pacs, onnx, segment), in a venv of
# their own: the extras at their newest versions (upgrade-strategy eager), torch and torchvision at the main
# venv's versions (so no second multi-GB download). Versions go to $(LATEST)/versions.txt. `make test` stays
# the main job, on the versions the README names.
LATEST       ?= .venv-latest
LATEST_TESTS ?= tests/test_hub.py tests/test_hub_failures.py tests/test_tracking.py tests/test_tracking_stores.py \
	tests/test_serve.py tests/test_serve_segmenter.py tests/test_serve_browser.py \
	tests/test_dicom.py tests/test_dicom_codecs.py tests/test_dicom_corpus.py \
	tests/test_export.py tests/test_quantize.py tests/test_bundle.py tests/test_bundle_segmenter.py \
	tests/test_segment.py tests/test_segment_hygiene.py tests/test_segment_metrics.py \
	tests/test_dicom_out.py tests/test_pacs.py tests/test_listen.py
EXTRAS_PKGS  := huggingface-hub httpx httpx2 mlflow mlflow-skinny fastapi uvicorn python-multipart pydicom \
	pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg onnx onnxruntime onnxscript segmentation-models-pytorch \
	highdicom dicomweb-client pynetdicom timm torch torchvision

latest-venv: $(STAMP)
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[all,mlflow,dev]' \
		"torch==$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])')" \
		"torchvision==$$($(PY) -c 'import torchvision; print(torchvision.__version__.split("+")[0])')"
	$(LATEST)/bin/python -m pip freeze 2>/dev/null \
		| grep -iE '^($(shell echo $(EXTRAS_PKGS) | sed 's/[-_]/[-_]/g' | tr ' ' '|'))==' > $(LATEST)/versions.txt
	cat $(LATEST)/versions.txt

test-latest:
	test -x $(LATEST)/bin/python || $(MAKE) latest-venv
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(LATEST_TESTS)
	@echo "test-latest ran with:"; cat $(LATEST)/versions.txt

# Every benchmark, each printing the machine first and its headline ratio last; figures and the machine into
# benchmarks/results.json. `make bench BENCH_ARGS=--quick` for smaller inner sizes, `--only NAME,...` for some.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks examples
	$(VENV)/bin/ruff format src tests benchmarks examples

clean:
	rm -rf $(DEMO) $(LATEST) .pytest_cache build *.egg-info src/*.egg-info
