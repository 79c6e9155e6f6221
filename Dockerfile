# Chatarchief bot image: slim, non-root, the package installed, `chatarchief` as entrypoint.
# Runs with a read-only root file system (`docker run --read-only`, compose `read_only: true`). Writable:
#   /data     the data dir (volume; log, encrypted media, Matrix crypto store, control socket)
#   /archive  monthly packages ([archive] destination; volume, or bind-mount the organisation's share)
#   /tmp      a tmpfs (nothing lasting is written there; PYTHONDONTWRITEBYTECODE keeps Python from trying)
# Read-only mounts: the config and secrets under /etc/chatarchief (key file 0600, owned by uid 10001).
# See deploy/docker-compose.yml and docs/operations.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin chatarchief \
    && mkdir -p /data /archive \
    && chown chatarchief:chatarchief /data /archive \
    && chmod 0700 /data /archive

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY bridge ./bridge
# Byte-code compiled at build time: the root file system is read-only at run time.
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf /src

USER chatarchief
WORKDIR /data
ENV CHATARCHIEF_STORAGE__DATA_DIR=/data \
    CHATARCHIEF_ARCHIVE__DESTINATION=/archive
VOLUME ["/data", "/archive"]
# /metrics and /healthz when [metrics] enabled (inside a container: listen 0.0.0.0:9464 with allow_remote,
# published to the host's loopback only, as deploy/docker-compose.yml does)
EXPOSE 9464
ENTRYPOINT ["chatarchief"]
CMD ["run", "--config", "/etc/chatarchief/chatarchief.toml"]
