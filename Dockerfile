# orinflow for GPU hosts and PCs: export, quantize, fine-tune (--device cuda), evaluate and bundle for the Jetson.
#   make docker                      (docker build --force-rm -t orinflow .)
#   docker run --rm --gpus all -it --user "$(id -u):$(id -g)" -v "$PWD:/workspace" orinflow
# A Jetson does not run this image: it runs the bundle that `orinflow deploy` writes (docs/install.md).
FROM debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 and make, which installs orinflow exactly as on a PC; libGL and GLib for OpenCV;
# ca-certificates so certificates added below are trusted.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv make ca-certificates libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# Extra CA certificates (*.crt, none by default) for a TLS-inspecting proxy between this build and PyPI.
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/orinflow/
RUN update-ca-certificates

ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YOLO_OFFLINE=1 \
    PATH=/opt/orinflow/.venv/bin:$PATH

WORKDIR /opt/orinflow
# torch and torchvision first, in a layer of their own, with the Makefile's pins.
COPY Makefile pyproject.toml ./
RUN make torch
COPY . .
RUN make venv && orinflow --help >/dev/null

# A non-root user by default (its ids are build arguments); `--user "$(id -u):$(id -g)"` makes files in a
# mounted folder yours. HOME is writable by any id, so Ultralytics, Matplotlib and OpenVINO keep their settings.
ARG ORINFLOW_UID=1000
ARG ORINFLOW_GID=1000
RUN groupadd --gid "$ORINFLOW_GID" orinflow \
    && useradd --uid "$ORINFLOW_UID" --gid orinflow --create-home --shell /bin/bash orinflow \
    && chmod 1777 /home/orinflow \
    && mkdir -p /workspace && chown orinflow:orinflow /workspace
ENV HOME=/home/orinflow
USER ${ORINFLOW_UID}:${ORINFLOW_GID}
WORKDIR /workspace
CMD ["bash"]
