#!/usr/bin/env bash
# Add (or change) a broker account in the Mosquitto password file of the compose stack.
#
#   deploy/mosquitto/add-device.sh PATIENT_ID [PASSWORD]      # a wearable: username = patient id
#   deploy/mosquitto/add-device.sh p2es-engine [PASSWORD]     # the service accounts, once
#   deploy/mosquitto/add-device.sh p2es-alerts [PASSWORD]
#   deploy/mosquitto/add-device.sh p2es-operator [PASSWORD]  # ward staff: p2es alerts ack/silence
#
# Without PASSWORD a random one is generated and printed (give it to the device; it is stored
# only hashed).  The file is deploy/secrets/mosquitto_passwd, or $P2ES_MOSQUITTO_PASSWD.
# Uses the local mosquitto_passwd if installed, else the eclipse-mosquitto image via Docker.
# A running broker picks the change up on `docker compose kill -s SIGHUP mosquitto`.
set -euo pipefail

usage() { echo "usage: $0 PATIENT_ID|p2es-engine|p2es-alerts|p2es-operator [PASSWORD]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
name=$1
if [[ ! $name =~ ^[A-Za-z0-9_.-]{1,64}$ ]]; then
  echo "$0: error: '$name' is not a valid patient id ([A-Za-z0-9_.-]{1,64})" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
file=${P2ES_MOSQUITTO_PASSWD:-$here/../secrets/mosquitto_passwd}
password=${2:-}
generated=0
if [[ -z $password ]]; then
  password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
  generated=1
fi
mkdir -p "$(dirname "$file")"
# 644: the broker drops root before it re-reads the file on SIGHUP; it holds only salted hashes
[[ -e $file ]] || { : > "$file"; chmod 644 "$file"; }

if command -v mosquitto_passwd > /dev/null 2>&1; then
  mosquitto_passwd -b "$file" "$name" "$password"
elif command -v docker > /dev/null 2>&1; then
  dir=$(cd "$(dirname "$file")" && pwd)
  docker run --rm -v "$dir:/work" eclipse-mosquitto:2 \
    mosquitto_passwd -b "/work/$(basename "$file")" "$name" "$password"
else
  echo "$0: error: needs mosquitto_passwd (apt-get install mosquitto) or docker" >&2
  exit 1
fi
if [[ $generated == 1 ]]; then
  echo "added $name to $file; password: $password"
else
  echo "added $name to $file"
fi
