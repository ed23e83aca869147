# Two commands matter: `make demo` (serve the tiny demo checkpoint and generate two videos) and `make test`.
PY := .venv/bin/python
DEMO_DIR := checkpoints/demo
export PYTHONUNBUFFERED := 1

.PHONY: setup tiny demo test serve perf bench clean

setup:
	@bash scripts/setup_env.sh

tiny: setup
	@$(PY) -m wan_distill.tiny --out $(DEMO_DIR)

demo: setup tiny
	@$(PY) scripts/demo.py --checkpoints $(DEMO_DIR) --out outputs

test: setup
	@$(PY) -m pytest -q tests

# Serves the tiny demo models with the demo configs (SERVE_ARGS: e.g. "--grpc-port 8001"); for real weights run
# scripts/triton_server.py with the WAN_* variables set (README, "Serving real Wan2.1 weights").
serve: setup tiny
	@$(PY) scripts/demo.py --checkpoints $(DEMO_DIR) --serve -- $(SERVE_ARGS)

clean:
	rm -rf outputs .pytest_cache
