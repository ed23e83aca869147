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

serve: setup tiny
	@WAN_T2V_MODEL_PATH=$${WAN_T2V_MODEL_PATH:-$(DEMO_DIR)/Wan2.1-T2V-tiny} WAN_I2V_MODEL_PATH=$${WAN_I2V_MODEL_PATH:-$(DEMO_DIR)/Wan2.1-I2V-tiny} \
	  $(PY) scripts/triton_server.py --model-repository model_repository

clean:
	rm -rf outputs .pytest_cache
