# a2llm_ros: `make test` runs the whole test suite, `make demo` the main job.
# Both bootstrap the environment first (tools/bootstrap.py; a no-op when
# nothing changed).  DDS stays on loopback with a per-run domain id unless
# the caller sets these variables (a robot's owner overrides them).
SHELL := /bin/bash
PYTHON ?= python3
ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
ROS_LOCALHOST_ONLY ?= 1
ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 100 + 1 )))
export ROS_AUTOMATIC_DISCOVERY_RANGE ROS_DOMAIN_ID
ENV := . .venv/a2llm_env.sh &&
PYTEST_ARGS ?=

.PHONY: env test demo lint doctor clean shell default-checkpoint eval

env:
	@$(PYTHON) tools/bootstrap.py

test: env
	@$(ENV) echo "ROS_DOMAIN_ID=$$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$$ROS_AUTOMATIC_DISCOVERY_RANGE" && \
	  python -m pytest test $(PYTEST_ARGS)

demo: env
	@$(ENV) a2llm demo --out demo_out --polite --max-answer-s 5

# The shipped default checkpoint, rebuilt: synthetic FLAME-QA set + curriculum (tiny).
DATA_DIR ?= .a2llm_data/flameqa_synth
TRAIN_DIR ?= .a2llm_data/train_tiny
default-checkpoint: env
	@$(ENV) a2llm data synth --out $(DATA_DIR) --seed 0 --n-pairs 50 --n-voices 8 && \
	  a2llm train --config config/train_tiny.yaml --data $(DATA_DIR) --out $(TRAIN_DIR) \
	    --install-default && \
	  python -m a2llm_ros.tools.training.codec_refiner --checkpoint default && \
	  python -m a2llm_ros.tools.training.end_of_turn --checkpoint default

eval: env
	@$(ENV) a2llm eval --checkpoint default --data $(DATA_DIR) --split test \
	  --json $(TRAIN_DIR)/eval_test.json --markdown $(TRAIN_DIR)/eval_test.md

lint: env
	@$(ENV) flake8 a2llm_ros test tools scripts launch && lint-imports --no-cache

doctor: env
	@$(ENV) a2llm doctor

shell: env
	@echo "Entering the a2llm_ros environment (exit to leave)." && \
	  bash --rcfile <(echo '. ~/.bashrc 2>/dev/null; . .venv/a2llm_env.sh; PS1="(a2llm) $$PS1"')

clean:
	rm -rf .a2llm_ws demo_out .a2llm_data

distclean: clean
	rm -rf .venv
