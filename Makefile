# make demo   - set up and run the main job on embedded defaults (local Ray, synthetic data)
# make test   - set up and run the default test suite (slow tests: make test-all)
.PHONY: setup demo test test-all bench soak clean
setup:
	scripts/setup.sh
demo:
	jobs/demo.sh
test: setup
	.venv/bin/python -m pytest -m "not slow" -q
test-all: setup
	.venv/bin/python -m pytest -q
soak: setup  # fault soak: random worker kills, Ctrl-C/resume cycles, S3 faults (MINUTES=10)
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
clean:
	rm -rf runs data/synth_sky .pytest_cache
