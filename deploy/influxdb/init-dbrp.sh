#!/bin/bash
# Runs once, after the InfluxDB 2 image's initial setup: map the v1 database/retention policy
# that Grafana's InfluxQL queries and the v1 /write API use onto the bucket (DBRP mapping).
set -euo pipefail
bucket_id="$(influx bucket list --name "${DOCKER_INFLUXDB_INIT_BUCKET}" --hide-headers | cut -f1)"
influx v1 dbrp create --db "${DOCKER_INFLUXDB_INIT_BUCKET}" --rp autogen \
  --bucket-id "${bucket_id}" --default
