# One image for the API and the workers; the command chooses the role:
#   softunlearn serve --host 0.0.0.0 --port 8000     (API)
#   softunlearn worker [--queues gpu,cpu]            (worker)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SOFTUNLEARN_STORE=/data/store

WORKDIR /srv/softunlearn

# torch first, the CPU wheel from the PyTorch CPU index (any other resolution pulls a multi-GB
# CUDA build). A GPU image would install the matching CUDA wheel here instead.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY app ./app
COPY models_store ./models_store
COPY workers ./workers
RUN pip install .

RUN groupadd --system --gid 10001 softunlearn \
    && useradd --system --uid 10001 --gid softunlearn --home-dir /srv/softunlearn --shell /usr/sbin/nologin softunlearn \
    && mkdir -p /data/store \
    && chown -R softunlearn:softunlearn /data
USER softunlearn:softunlearn

VOLUME ["/data/store"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["softunlearn", "serve", "--host", "0.0.0.0", "--port", "8000"]
