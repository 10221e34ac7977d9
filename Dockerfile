# imgsearch daemon with CPU-only PyTorch; state (database, index, token, model weights) in /data.
#   docker build -t imgsearch .
#   docker run -p 127.0.0.1:8080:8080 -v imgsearch-data:/data -e IMGSEARCH_TOKEN=SECRET imgsearch
# It binds 0.0.0.0 inside the container, so the daemon refuses to start without a token
# (IMGSEARCH_TOKEN=SECRET, or IMGSEARCH_TOKEN=auto to generate one into /data/token).
# See "Docker" in README.md.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The CPU build from PyTorch's own index first: `pip install .` then finds torch satisfied
# and never pulls the CUDA build (gigabytes) from PyPI. Keep in step with the venv's versions.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1

# No apt packages: the opencv-python-headless, faiss-cpu and torch wheels bundle their
# native libraries beyond libstdc++ and zlib, which the base image has.
WORKDIR /opt/imgsearch
COPY pyproject.toml README.md ./
COPY imgsearch/ imgsearch/
# "./[heic]": this folder, with the HEIC/HEIF (iPhone photo) reader.
RUN pip install --no-cache-dir "./[heic]" \
    && useradd --no-log-init --create-home --uid 1000 --user-group imgsearch \
    && mkdir /data \
    && chown imgsearch:imgsearch /data

# Model weights downloaded on first start (open_clip via the Hugging Face hub) are cached in
# /data/cache, so they persist with the volume.
ENV IMGSEARCH_HOST=0.0.0.0 \
    IMGSEARCH_DATA_DIR=/data \
    XDG_CACHE_HOME=/data/cache \
    HF_HOME=/data/cache/huggingface

USER 1000:1000
VOLUME ["/data"]
EXPOSE 8080

# /health needs no token. The first start may download CLIP weights before the port opens.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/health' % os.environ.get('IMGSEARCH_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["imgsearch"]
CMD ["serve"]
