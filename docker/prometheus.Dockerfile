# Prometheus from the Debian package (no registry image needed), scraping segserve (docker/prometheus.yml).
#   docker build -f docker/prometheus.Dockerfile --build-arg BASE_IMAGE=debian:bookworm-slim -t segserve-prometheus docker
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
COPY prometheus.yml /etc/prometheus/prometheus.yml
USER prometheus
EXPOSE 9090
CMD ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=:9090"]
