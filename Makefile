# The two commands of the README: `make demo` and `make test`. Each builds its own virtual
# environment from the registries (nothing preinstalled), then runs.
PYTHON ?= python3
VENV := .venv
LATEST := .venv-latest
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: gpu-wheels solvers-results demo test test-fast test-slow lint clean mnist-results tiny-sd-results fidelity-results comfyui-results

demo: $(VENV)/.installed  ## set up, then run the main job on the shipped default model
	$(VENV)/bin/python main.py

test: $(VENV)/.installed $(LATEST)/.installed $(FASHION)  ## set up, then run the tests on both diffusers versions
	$(VENV)/bin/ruff check cachediff tests scripts experiments integrations *.py
	$(VENV)/bin/ruff format --check cachediff tests scripts experiments integrations *.py
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -n 2
	OMP_NUM_THREADS=1 $(LATEST)/bin/python -m pytest -n 2 -p no:cacheprovider

test-fast: $(VENV)/.installed  ## the pinned environment only
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -n 2

test-slow: $(VENV)/.installed  ## also the tests marked slow
	$(VENV)/bin/python -m pytest --runslow

MNIST_RUN := runs/mnist-sweep
MNIST_DOCS := docs/results/mnist
MNIST_SWEEP := $(VENV)/bin/python scripts/sweep.py --model_type ddpm-mnist --samples 2000 --shard 250 --batch 32 \
    --fid-reference mnist --timing-images 32 --repeats 3 --threads 2 --out $(MNIST_RUN) \
    --results $(MNIST_DOCS)/results.csv
MNIST_GRID := ddim-100 N2-b2 N5-b2 N10-b2 N5-b2-adaptive-cap N5-b2-zeros ddim-61 ddim-20 s20-N2-b0 ddim-11

mnist-results: $(VENV)/.installed  ## docs/DDPM_MNIST.md's tables and plots (resumable; about 9 h on 2 cores)
	$(MNIST_SWEEP) --suites forecast schedules --only '*-f?' '*-adaptive'
	$(MNIST_SWEEP) --steps 20 --baseline-steps 100 --branch 0 --budgets 2 3 --suites forecast schedules \
	    --only '*-f?' '*-adaptive'
	$(MNIST_SWEEP) --suites interval zeros steps curve schedules branch
	$(MNIST_SWEEP) --steps 20 --baseline-steps 100 --branch 0 --intervals 2 3 \
	    --budgets 2 3 --suites interval steps schedules
	$(MNIST_SWEEP) --stage generate --samples 250 --suites interval schedules curve steps zeros \
	    --only $(MNIST_GRID)
	$(MNIST_SWEEP) --stage generate --samples 250 --steps 20 --baseline-steps 100 --branch 0 \
	    --intervals 2 --suites interval --only $(MNIST_GRID)
	$(VENV)/bin/python scripts/plot_sweep.py $(MNIST_DOCS)/results.csv --out $(MNIST_DOCS) \
	    --samples $(MNIST_RUN) --grid $(MNIST_GRID)
	$(VENV)/bin/python experiments/ddpm/report_mnist.py $(MNIST_DOCS)/results.csv --out $(MNIST_DOCS)/tables.md

SD_RUN := runs/tiny-sd-sweep
SD_DOCS := docs/results/tiny-sd
SD_ARGS := --model_type tiny-sd --samples 2000 --shard 200 --batch 100 --fid-reference fashion-mnist \
    --timing-images 20 --repeats 3 --threads 2
SD_SWEEP := $(VENV)/bin/python scripts/sweep.py $(SD_ARGS) --out $(SD_RUN) --results $(SD_DOCS)/results.csv
SD_DPM := $(VENV)/bin/python scripts/sweep.py $(SD_ARGS) --scheduler DPMSolverMultistepScheduler \
    --out runs/tiny-sd-dpmpp --results $(SD_DOCS)/dpmpp/results.csv
SD_GRID := plms-50 N5-b1 plms-25 plms-15

tiny-sd-results: $(VENV)/.installed $(FASHION)  ## docs/TINY_SD.md's tables (the paper's Tables 3, 13/14; resumable)
	$(SD_SWEEP) --suites interval curve --intervals 5 --curve 25 --only plms-25 N5-b1
	$(SD_DPM) --steps 25 --suites interval curve --intervals 2 3 4 --curve 10 15 20
	$(SD_DPM) --steps 20 --baseline-steps 25 --suites interval schedules forecast --intervals 2 3 \
	    --budgets 2 3 --only 's20-N?-b1' '*-adaptive' '*-f?'
	$(SD_SWEEP) --suites curve interval --curve 10 12 13 15 20 30 35 40 45 --intervals 2 3 4 6 7 8
	$(SD_SWEEP) --suites grid --intervals 2 3 4 5 6 7 8 --schedules non-uniform
	$(SD_SWEEP) --suites schedules forecast --budgets 5
	$(SD_SWEEP) --stage generate --samples 200 --suites interval curve --intervals 5 --curve 15 25 \
	    --only $(SD_GRID)
	$(VENV)/bin/python scripts/plot_sweep.py $(SD_DOCS)/results.csv --out $(SD_DOCS) --quality fid \
	    --samples $(SD_RUN) --grid $(SD_GRID)
	$(VENV)/bin/python scripts/plot_sweep.py $(SD_DOCS)/dpmpp/results.csv --out $(SD_DOCS)/dpmpp --quality fid

FIDELITY_DOCS := docs/results/fidelity
FIDELITY := $(VENV)/bin/python scripts/sweep.py --model_type tiny-sd --samples 200 --shard 100 --batch 100 \
    --fidelity-images 200 --converged-steps 200 --converged-out runs/fidelity --repeats 0 --threads 2 --suites curve

fidelity-results: $(VENV)/.installed  ## docs/PLANNING.md's instrument: fidelity to the converged solution per sampler and step count
	$(FIDELITY) --curve 10 15 20 25 30 40 --out runs/fidelity/plms-leading --results $(FIDELITY_DOCS)/plms-leading.csv
	$(FIDELITY) --curve 10 15 20 25 30 40 --timestep-spacing trailing --out runs/fidelity/plms-trailing \
	    --results $(FIDELITY_DOCS)/plms-trailing.csv
	$(FIDELITY) --steps 25 --curve 8 10 12 15 20 --scheduler DPMSolverMultistepScheduler --timestep-spacing trailing \
	    --out runs/fidelity/dpmpp-trailing --results $(FIDELITY_DOCS)/dpmpp-trailing.csv
	$(FIDELITY) --steps 30 --curve 10 15 20 25 --scheduler EulerDiscreteScheduler --timestep-spacing trailing \
	    --out runs/fidelity/euler-trailing --results $(FIDELITY_DOCS)/euler-trailing.csv
	$(VENV)/bin/python scripts/report_fidelity.py $(FIDELITY_DOCS)/*.csv --out $(FIDELITY_DOCS)
	for s in plms-leading plms-trailing dpmpp-trailing euler-trailing; do \
	    $(VENV)/bin/python scripts/plot_sweep.py $(FIDELITY_DOCS)/$$s.csv --out $(FIDELITY_DOCS)/$$s --quality psnr_conv_mean_db; \
	done

comfyui-results: $(LATEST)/.installed  ## docs/COMFYUI.md's table: the DeepCache ports per sampler, on ComfyUI's KSampler
	$(LATEST)/bin/python integrations/comfyui/compare_ports.py --out docs/results/comfyui

gpu-wheels: $(VENV)/.installed  ## .whl/: what scripts/gpu_check.sh needs on a GPU machine that has torch but cannot fetch packages
	$(VENV)/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 DeepCache==0.1.1 importlib_metadata==8.7.0

SOLVER_SWEEP = $(VENV)/bin/python scripts/sweep.py --model_type tiny-sd --timestep-spacing trailing --branch 0 \
	--intervals 2 3 5 --suites steps interval fit --samples 500 --shard 100 --batch 16 --fidelity-images 500 \
	--converged-steps 100 --converged-out runs/converged --repeats 0
SOLVER_REPORT = $(VENV)/bin/python scripts/report_solvers.py \
	--converged runs/converged/converged-dpmpp2m-trailing/dpmpp2m-trailing-100
# $(call solver,scheduler class,steps,name): one solver's sweep and its report
define solver
	$(SOLVER_SWEEP) --scheduler $(1) --steps $(2) --out runs/solvers/$(3) --results docs/results/solvers/$(3).csv
	$(SOLVER_REPORT) docs/results/solvers/$(3).csv --samples runs/solvers/$(3) --out docs/results/solvers/$(3)
endef

solvers-results: $(VENV)/.installed  ## docs/SOLVERS.md: caching against fewer steps per solver, 500 seeds each (issue 27)
	$(call solver,DPMSolverMultistepScheduler,25,dpmpp-25)
	$(call solver,EulerDiscreteScheduler,30,euler-30)
	$(call solver,UniPCMultistepScheduler,20,unipc-20)
	$(call solver,DPMSolverMultistepScheduler,20,dpmpp-20)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format cachediff tests scripts experiments integrations *.py
	$(VENV)/bin/ruff check --fix cachediff tests scripts experiments integrations *.py

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(LATEST)/.installed: requirements-latest.txt requirements-nodeps.txt requirements-comfyui.txt pyproject.toml
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q -r requirements-latest.txt
	$(LATEST)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	$(LATEST)/bin/pip install -q --no-deps -r requirements-comfyui.txt
	$(LATEST)/bin/pip install -q --no-deps -e .
	touch $@

$(FASHION):  ## Fashion-MNIST's IDX files, from Debian (the tiny Stable Diffusion's data)
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache outputs
