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

# Serves the tiny demo models with the demo configs; for real weights run scripts/triton_server.py with the
# WAN_* variables set (README, "Serving real Wan2.1 weights").
serve: setup tiny
	@WAN_T2V_MODEL_PATH=$(DEMO_DIR)/Wan2.1-T2V-tiny WAN_I2V_MODEL_PATH=$(DEMO_DIR)/Wan2.1-I2V-tiny \
	  WAN_T2V_CONFIG=configs/demo/wan_t2v_distill_4step_demo.json WAN_I2V_CONFIG=configs/demo/wan_i2v_distill_4step_demo.json \
	  WAN_T2V_BASELINE_CONFIG=configs/demo/wan_t2v_baseline_50step_cfg_demo.json \
	  WAN_I2V_BASELINE_CONFIG=configs/demo/wan_i2v_baseline_40step_cfg_demo.json \
	  $(PY) scripts/triton_server.py --model-repository model_repository $(SERVE_ARGS)

clean:
	rm -rf outputs .pytest_cache
