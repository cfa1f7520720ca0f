# HAProxy from the Debian package, running deploy/haproxy/haproxy.cfg (mounted by compose at
# /etc/haproxy/haproxy.cfg): the scale profile's balancer with stream affinity.
#   docker build -f docker/haproxy.Dockerfile --build-arg BASE_IMAGE=debian:bookworm-slim -t segserve-haproxy docker
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*
USER haproxy
EXPOSE 8000 8404
CMD ["haproxy", "-db", "-W", "-f", "/etc/haproxy/haproxy.cfg"]
