# syntax=docker/dockerfile:1
# The search service on a CPU (docs/deploy.md):
#   docker build -t traffic-retrieval .
#   docker run --rm -p 8000:8000 -v "$PWD/INDEX:/index" -v /data/gallery:/data/gallery:ro -v "$PWD/models:/models:ro" traffic-retrieval
# The index records the gallery's and the checkpoint's absolute paths: mount them where the
# index says, or build the index in this image (docs/deploy.md, "Mounting").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# torch and torchvision from PyTorch's CPU wheel index (PyPI's Linux wheels pull in CUDA: gigabytes
# a CPU never uses), at the versions constraints.txt pins; the rest then resolves around them.
# A GPU image: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 (docs/deploy.md).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY constraints.txt ./
RUN pip install --no-deps --index-url "$TORCH_INDEX" \
        $(grep -E '^(torch|torchvision)==' constraints.txt)

# the package with the search service's extra, every version pinned by constraints.txt
COPY pyproject.toml README.md LICENSE ./
COPY traffic_retrieval ./traffic_retrieval
RUN pip install -c constraints.txt '.[serve]' \
    && pip check \
    && rm -rf /src
WORKDIR /

# an unprivileged user; /index is its own (a named volume starts with the image's owner), the
# gallery and the checkpoint are only read
RUN useradd --system --create-home --uid 10001 --user-group app \
    && mkdir -p /index /gallery /models \
    && chown app:app /index
USER app
WORKDIR /home/app
VOLUME ["/index", "/gallery", "/models"]

EXPOSE 8000
# 127.0.0.1 is always an allowed Host; /api/health answers 503 when the search worker is down
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4).status != 200)"]

ENTRYPOINT ["traffic-retrieval"]
# --allowed-host: the name clients reach the container under (here a compose service or container
# named traffic-retrieval); localhost and 127.0.0.1 always work. Give yours by replacing the command:
#   docker run ... traffic-retrieval serve --index /index --host 0.0.0.0 --allowed-host search.example.com
CMD ["serve", "--index", "/index", "--host", "0.0.0.0", "--port", "8000", "--allowed-host", "traffic-retrieval"]
