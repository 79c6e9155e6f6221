# Chatarchief bot image: slim, non-root, the package installed, `chatarchief` as entrypoint.
# Mount the data dir at /data and the key file + config read-only under /etc/chatarchief.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin chatarchief \
    && mkdir -p /data && chown chatarchief /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir . && rm -rf /src

USER chatarchief
WORKDIR /data
ENV CHATARCHIEF_STORAGE__DATA_DIR=/data
VOLUME ["/data"]
ENTRYPOINT ["chatarchief"]
CMD ["run", "--config", "/etc/chatarchief/chatarchief.toml"]
