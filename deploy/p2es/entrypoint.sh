#!/bin/sh
# p2es container entrypoint: for each secret variable NAME with NAME_FILE set (a Compose secret
# under /run/secrets/), export NAME with the file's content (trailing newline stripped), then
# exec the command.  Secrets thus never appear in compose.yaml or in `docker inspect`.
set -eu
for name in P2ES_MQTT_PASSWORD P2ES_INFLUX_TOKEN P2ES_WEBHOOK_SECRET; do
  eval "file=\${${name}_FILE:-}"
  if [ -n "$file" ]; then
    if [ ! -r "$file" ]; then
      echo "p2es: error: ${name}_FILE=$file is not readable" >&2
      exit 2
    fi
    value=$(cat "$file")
    export "$name=$value"
    unset "${name}_FILE"
  fi
done
exec "$@"
