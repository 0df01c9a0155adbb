# `make demo` and `make test` build .venv on first use; nothing else is needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TORCH_STAMP := $(VENV)/.torch
STAMP := $(VENV)/.installed
IMAGE ?= orinflow
DOCKER_CONTEXT ?= .
DOCKER_BUILD_FLAGS ?=
export YOLO_OFFLINE := 1

.PHONY: demo test venv torch docker docker-demo clean

venv: $(STAMP)
torch: $(TORCH_STAMP)

# torch and torchvision first and pinned (pip takes them from this machine's disk where it has them);
# a step of their own so the Docker image keeps them in a layer that source changes do not rebuild.
$(TORCH_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (orinflow needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	touch $(TORCH_STAMP)

$(STAMP): pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/orinflow demo

test: $(STAMP)
	$(PY) -m pytest -q

# The image installs with this Makefile (Dockerfile); extra CA certificates go in docker/ca-certificates/.
# --force-rm: the legacy builder otherwise keeps a failed step's container (BuildKit ignores the flag).
docker:
	docker build --force-rm $(DOCKER_BUILD_FLAGS) -t $(IMAGE) $(DOCKER_CONTEXT)

# The demo inside the image, as the invoking user, writing to this tree's workspace/.
docker-demo: docker
	mkdir -p workspace
	docker run --rm --user "$$(id -u):$$(id -g)" -v "$(CURDIR)/workspace:/workspace/workspace" $(IMAGE) orinflow demo

clean:
	rm -rf $(VENV) workspace .pytest_cache
