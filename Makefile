# Two commands matter: `make demo` (serve the tiny demo checkpoint and generate two videos) and `make test`.
PY := .venv/bin/python
DEMO_DIR := checkpoints/demo
export PYTHONUNBUFFERED := 1

.PHONY: setup tiny demo train test serve perf bench clean ui-env ui test-ui ui-screenshot

setup:
	@bash scripts/setup_env.sh

tiny: setup
	@$(PY) -m wan_distill.tiny --out $(DEMO_DIR)

# T2V and I2V serve the trained toy models committed in training/models; see README "Trained demo".
demo: setup tiny
	@$(PY) scripts/demo.py --checkpoints $(DEMO_DIR) --out outputs

# Retrain the toy models of `make demo` (CPU: 80 min measured on the 2 shared cores; README "Trained demo").
train: setup
	@OMP_NUM_THREADS=1 nice -n 15 $(PY) -m wan_training.recipe --out training/models

test: setup
	@$(PY) -m pytest -q tests

# Hostile catalogue, bursts, killed stubs, queue bound, soak on the real server (also part of `make test`).
.PHONY: test-reliability
test-reliability: setup
	@$(PY) -m pytest -q tests/test_reliability.py tests/test_reliability_units.py

# Serves the tiny demo models with the demo configs (SERVE_ARGS: e.g. "--grpc-port 8001"); for real weights run
# scripts/triton_server.py with the WAN_* variables set (README, "Serving real Wan2.1 weights").
serve: setup tiny
	@$(PY) scripts/demo.py --checkpoints $(DEMO_DIR) --serve -- $(SERVE_ARGS)

# Web UI (wan-ui) in its own venv: gradio needs pillow<13, requirements.txt pins 13 (requirements-ui.txt says why).
UI_VENV := .venv-ui
$(UI_VENV)/.wan-ui-stamp: requirements-ui.txt pyproject.toml
	@[ -x $(UI_VENV)/bin/python ] || $${PYTHON:-python3} -m venv $(UI_VENV)
	@echo "ui-env: installing requirements-ui.txt into $(UI_VENV)"
	@$(UI_VENV)/bin/python -m pip install -q -r requirements-ui.txt
	@$(UI_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $@

ui-env: $(UI_VENV)/.wan-ui-stamp

# The demo server (tiny models) + the UI on http://127.0.0.1:7860 (WAN_UI_PORT=...); Ctrl-C stops both.
ui: setup tiny ui-env
	@$(PY) scripts/ui_demo.py --checkpoints $(DEMO_DIR)

# Browser test: headless system Chromium (apt-get install chromium chromium-driver) driven by playwright.
test-ui: setup ui-env
	@$(PY) -m pytest -q tests/test_ui.py

ui-screenshot: setup tiny ui-env
	@$(PY) scripts/ui_demo.py --checkpoints $(DEMO_DIR) --screenshot docs/ui.png

clean:
	rm -rf outputs .pytest_cache
