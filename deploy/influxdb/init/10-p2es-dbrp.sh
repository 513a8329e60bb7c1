#!/bin/bash
# Runs once, on the first start of the influxdb:2 container (after DOCKER_INFLUXDB_INIT_MODE=setup
# created the org, bucket and admin token): map database "p2es" / retention policy "autogen" to
# the bucket, so InfluxQL (Grafana's dashboards, `p2es` tools) can query it through /query.
set -euo pipefail

org=${DOCKER_INFLUXDB_INIT_ORG:?}
bucket=${DOCKER_INFLUXDB_INIT_BUCKET:?}
token=${DOCKER_INFLUXDB_INIT_ADMIN_TOKEN:-}
if [[ -z $token && -n ${DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE:-} ]]; then
  token=$(< "$DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE")
fi
host=${INFLUX_HOST:-http://localhost:8086}
auth=(--host "$host" --token "$token" --org "$org")

bucket_id=$(influx bucket list "${auth[@]}" --name "$bucket" --hide-headers | cut -f1)
if [[ -z $bucket_id ]]; then
  echo "p2es init: bucket $bucket not found" >&2
  exit 1
fi
if influx v1 dbrp list "${auth[@]}" --db "${P2ES_INFLUXQL_DB:-p2es}" --hide-headers | grep -q .; then
  echo "p2es init: DBRP mapping for ${P2ES_INFLUXQL_DB:-p2es} exists"
else
  influx v1 dbrp create "${auth[@]}" --db "${P2ES_INFLUXQL_DB:-p2es}" --rp autogen \
    --bucket-id "$bucket_id" --default
  echo "p2es init: InfluxQL database ${P2ES_INFLUXQL_DB:-p2es}/autogen -> bucket $bucket ($bucket_id)"
fi
