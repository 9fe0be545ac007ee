# make demo       - set up and run the main job on embedded defaults (its own local Ray head, synthetic data)
# make test       - set up (.venv and the system parts the tests run: prometheus, pushgateway, chromium)
#                   and run the default suite (under 10 minutes on 2 cores); the 15 slowest tests at the end
# make clean      - delete what make demo made (runs/tiny_cpu, data/synth_sky); other runs stay
# make test-slow  - the slow tests only (CI runs both); make test-all - everything in one run
.PHONY: setup setup-system demo test test-slow test-all bench soak clean
PYTEST = RAY_AUTH_MODE=token .venv/bin/python -m pytest
setup:
	scripts/setup.sh
setup-system:  # apt: prometheus, prometheus-pushgateway, chromium (SSAGAN_TEST_ALLOW_MISSING=1: only say what is missing)
	scripts/setup-system.sh
demo:
	jobs/demo.sh
test: setup setup-system checkov-env
	$(PYTEST) -m "not slow" -q --durations=15
test-slow: setup setup-system checkov-env
	$(PYTEST) -m slow -q --durations=15
test-all: setup setup-system checkov-env
	$(PYTEST) -q --durations=15
# checkov (tests/test_k8s_security.py scans k8s/ with it) in an environment of its own: it pins
# botocore 1.35 and packaging 23, which would break s3fs/aiobotocore in .venv
CHECKOV_VERSION = 3.3.30
.PHONY: checkov-env
checkov-env: .venv-checkov/.checkov-$(CHECKOV_VERSION)
.venv-checkov/.checkov-$(CHECKOV_VERSION):
	rm -rf .venv-checkov
	python3 -m venv .venv-checkov
	.venv-checkov/bin/pip install -q "checkov==$(CHECKOV_VERSION)"
	touch $@
soak: setup  # fault soak: worker kills, Ctrl-C/resume cycles, S3 faults, then the same weights as an uninterrupted run (MINUTES=10; the issue's figures: MINUTES=60)
	RAY_AUTH_MODE=token .venv/bin/python -m tests.soak --minutes $${MINUTES:-10}
bench: setup
	.venv/bin/python -m ssagan_dist.bench
.PHONY: bench-quality
bench-quality:  # prediction quality vs copy-frame (docs/quality.md); real footage also needs `apt-get install opencv-doc`
	EXTRAS=test,quality scripts/setup.sh
	RAY_AUTH_MODE=token .venv/bin/python -m ssagan_dist.bench quality
.PHONY: bench-zoo
bench-zoo:  # every registry model side by side vs copy-frame (docs/zoo.md); real footage also needs `apt-get install opencv-doc`
	EXTRAS=test,quality scripts/setup.sh
	RAY_AUTH_MODE=token .venv/bin/python -m ssagan_dist.bench zoo
# clean: only what `make demo` made: its run folder, its data and, while that head is not running, the
# state of the local Ray head (runs/.ray-local). Other runs under runs/ (every local run's default
# storage) and a live head's state are left alone; runs/ and data/ go only once empty.
clean:
	@if jobs/ray_local.sh status >/dev/null 2>&1; then \
	  echo "keeping runs/.ray-local: the local Ray head runs (jobs/ray_local.sh stop, then make clean)"; \
	else jobs/ray_local.sh stop >/dev/null 2>&1 || true; rm -rf runs/.ray-local; fi
	rm -rf runs/tiny_cpu data/synth_sky .pytest_cache
	-@rmdir runs data 2>/dev/null || true
