# Three images from one file (the command chooses the role in the two with the engine):
#   docker build -t softunlearn:cpu .                 the default target, `cpu`: CPU-only torch, [all,mlflow]
#   docker build --target gpu -t softunlearn:gpu .    CUDA torch, [all,mlflow], for GPU workers
#   docker build --target api -t softunlearn:api .    the API alone, [server]: no torch, a small image
#   softunlearn serve --host 0.0.0.0 --port 8000      (API; the image's HEALTHCHECK polls /healthz)
#   softunlearn worker [--queues gpu,cpu]             (worker; its healthcheck is `softunlearn worker-health`)
ARG PYTHON_IMAGE=python:3.11-slim

# The application as a wheel without its dependencies, built once; both targets install it.
FROM ${PYTHON_IMAGE} AS app-wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models_store ./models_store
COPY workers ./workers
RUN pip wheel --no-deps --wheel-dir /wheels .

# What both targets share: environment, the non-root user, the store volume, port, healthcheck
# and command of the API. The targets install torch, then the app, then switch to the user.
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SOFTUNLEARN_STORE=/data/store
WORKDIR /srv/softunlearn
RUN groupadd --system --gid 10001 softunlearn \
    && useradd --system --uid 10001 --gid softunlearn --home-dir /srv/softunlearn --shell /usr/sbin/nologin softunlearn \
    && mkdir -p /data/store \
    && chown -R softunlearn:softunlearn /data
VOLUME ["/data/store"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["softunlearn", "serve", "--host", "0.0.0.0", "--port", "8000"]

# CUDA target. torch 2.13's stable CUDA builds are 12.6 and 13.0 (PyTorch's release matrix; the
# cu128 index has no 2.13). cu126 runs on any driver of the CUDA 12 line (>= 525) and covers
# Maxwell to Hopper (H100/H200); for Blackwell GPUs build with
# --build-arg TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu130 (driver >= 580).
FROM base AS gpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu126
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN pip install --index-url ${TORCH_CUDA_INDEX} torch==2.13.0
# The installed torch (2.13.0+cu126) pinned as a constraint, so installing the app keeps it.
COPY --from=app-wheel /wheels /tmp/wheels
RUN pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt \
    && pip install --constraint /tmp/torch-constraint.txt "$(ls /tmp/wheels/softunlearn-*.whl)[all,mlflow]" \
    && rm -rf /tmp/wheels /tmp/torch-constraint.txt
USER softunlearn:softunlearn

# API target: the `[server]` extra only. The API never imports torch (a test checks it), so
# this image has none.
FROM base AS api
COPY --from=app-wheel /wheels /tmp/wheels
RUN pip install "$(ls /tmp/wheels/softunlearn-*.whl)[server]" \
    && rm -rf /tmp/wheels
USER softunlearn:softunlearn

# CPU target, the default (last stage): torch's CPU wheel from the PyTorch CPU index (any other
# resolution of torch pulls a multi-GB CUDA build).
FROM base AS cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# The installed torch (2.13.0+cpu) pinned as a constraint, so installing the app keeps it.
COPY --from=app-wheel /wheels /tmp/wheels
RUN pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt \
    && pip install --constraint /tmp/torch-constraint.txt "$(ls /tmp/wheels/softunlearn-*.whl)[all,mlflow]" \
    && rm -rf /tmp/wheels /tmp/torch-constraint.txt
USER softunlearn:softunlearn
