#!/usr/bin/env bash
# Add (or change) an account on the NATS cluster of the scale-out profile (the device ACL).
#
#   deploy/nats/add-user.sh PATIENT_ID [PASSWORD]     # a wearable: username = patient id
#   deploy/nats/add-user.sh p2es-engine [PASSWORD]    # the engine workers (p2es run --bus)
#   deploy/nats/add-user.sh p2es-alerts [PASSWORD]    # the alert service (MQTT)
#   deploy/nats/add-user.sh p2es-operator [PASSWORD]  # ward staff: p2es alerts ack/silence (MQTT)
#   deploy/nats/add-user.sh p2es-admin [PASSWORD]     # operations (nats CLI): everything in the account
#
# Every user lives in the one account P2ES (JetStream enabled), so what a wearable publishes over
# MQTT lands in the streams the engine reads.  The username decides the permissions, written
# against the NATS subjects of the MQTT topics (NATS maps `/` to `.` and a `.` inside a patient
# id to `//`; docs/scaling.md):
#
#   wearable <id>  MQTT only.  publish p2es.v1.patients.<id>.{ppg, ppg.bin, profile};
#                  subscribe p2es.v1.patients.<id>.profile (its own retained profile).
#                  A publish elsewhere is dropped by the server (QoS 1: acknowledged, not
#                  delivered, not retained), like Mosquitto's ACL.
#   p2es-engine    NATS only.  The JetStream API of its own streams and consumers (P2ES_PPG,
#                  P2ES_PROFILES, KV_p2es_workers: create/update/info, consumers, pull, unpin,
#                  acks), the membership bucket, vitals and dead letters; never a patient's
#                  PPG or profile, never a stream delete or purge.
#   p2es-alerts    MQTT only.  Reads vitals and ack/silence commands, reads/writes alerts,
#                  writes dead letters (deploy/mosquitto/acl's rules).
#   p2es-operator  MQTT only.  Writes ack/silence commands, reads alerts.
#   p2es-admin     NATS and MQTT, no restriction inside the account.
#
# The file is deploy/secrets/nats_users.conf (or $P2ES_NATS_USERS): `users: [...]` of the account,
# one user per line, passwords bcrypt-hashed.  Without PASSWORD a random one is generated and
# printed (give it to the device).  The NATS nodes include the file and pick a change up on a
# config reload: `docker compose --profile scaleout kill -s SIGHUP nats-1 nats-2 nats-3`.
# Hashing needs python3 (its bcrypt package or its crypt module) or htpasswd (apache2-utils);
# $P2ES_NATS_BCRYPT_COST sets the cost (default 11).
set -euo pipefail

usage() {
  echo "usage: $0 PATIENT_ID|p2es-engine|p2es-alerts|p2es-operator|p2es-admin [PASSWORD]" >&2
  exit 2
}
[[ $# -ge 1 && $# -le 2 ]] || usage
name=$1
if [[ ! $name =~ ^[A-Za-z0-9_.-]{1,64}$ ]]; then
  echo "$0: error: '$name' is not a valid patient id ([A-Za-z0-9_.-]{1,64})" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
file=${P2ES_NATS_USERS:-$here/../secrets/nats_users.conf}
cost=${P2ES_NATS_BCRYPT_COST:-11}
password=${2:-}
if [[ $password == *[\"\\[:cntrl:]]* ]]; then
  echo "$0: error: the password must not contain a quote, a backslash or a control character" >&2
  exit 2
fi
generated=0
if [[ -z $password ]]; then
  password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
  generated=1
fi

# bcrypt of $password (passed in the environment, never on a command line); cost 0 keeps it in
# plain text (scripts/nats.sh's private test cluster only: no hasher needed, fast connects)
hash_password() {
  local h=""
  if [[ $cost == 0 ]]; then
    echo "$password"
    return
  fi
  if command -v python3 > /dev/null 2>&1; then
    h=$(P2ES_PW=$password P2ES_COST=$cost python3 -W ignore - 2> /dev/null << 'PY' || true
import os
pw, cost = os.environ["P2ES_PW"], int(os.environ["P2ES_COST"])
try:
    import bcrypt
    print(bcrypt.hashpw(pw.encode(), bcrypt.gensalt(cost)).decode())
except ImportError:
    import crypt  # glibc/libxcrypt blowfish ($2b$); removed in Python 3.13

    print(crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << cost)))
PY
    )
  fi
  if [[ ! $h =~ ^\$2[abxy]\$ ]] && command -v htpasswd > /dev/null 2>&1; then
    h=$(htpasswd -inBC "$cost" "" <<< "$password" | tr -d ':\n')
  fi
  if [[ ! $h =~ ^\$2[abxy]\$[0-9]{2}\$ ]]; then
    echo "$0: error: cannot bcrypt the password: needs python3 (bcrypt or crypt) or htpasswd" >&2
    exit 1
  fi
  echo "$h"
}

# JSON string list of the arguments, for the NATS config (a JSON superset)
list() {
  local out="" s
  for s in "$@"; do out+="${out:+, }\"$s\""; done
  echo "[$out]"
}

p="p2es.v1.patients"
case $name in
  p2es-engine)
    types='["STANDARD"]'
    api=()
    for s in P2ES_PPG P2ES_PROFILES KV_p2es_workers; do
      api+=("\$JS.API.STREAM.CREATE.$s" "\$JS.API.STREAM.UPDATE.$s" "\$JS.API.STREAM.INFO.$s"
        "\$JS.API.CONSUMER.*.$s" "\$JS.API.CONSUMER.*.$s.>" "\$JS.API.CONSUMER.MSG.NEXT.$s.*"
        "\$JS.ACK.$s.>")
    done
    pub=$(list '$JS.API.INFO' "${api[@]}" '$JS.FC.>' '$KV.p2es_workers.>' "$p.*.vitals" p2es.v1.deadletter)
    sub=$(list '_INBOX.>')
    ;;
  p2es-alerts)
    types='["MQTT"]'
    pub=$(list "$p.*.alerts" p2es.v1.deadletter)
    sub=$(list "$p.*.vitals" "$p.*.alerts" p2es.v1.alerts.ack)
    ;;
  p2es-operator)
    types='["MQTT"]'
    pub=$(list p2es.v1.alerts.ack)
    sub=$(list "$p.*.alerts")
    ;;
  p2es-admin)
    types='["STANDARD", "MQTT"]'
    pub=""
    ;;
  *)  # a wearable; its patient id as a subject token (NATS's MQTT mapping: `.` -> `//`)
    types='["MQTT"]'
    tok=${name//./\/\/}
    pub=$(list "$p.$tok.ppg" "$p.$tok.ppg.bin" "$p.$tok.profile")
    sub=$(list "$p.$tok.profile")
    ;;
esac

hash=$(hash_password)
entry="{user: \"$name\", password: \"$hash\", allowed_connection_types: $types"
if [[ -n $pub ]]; then
  entry+=", permissions: {publish: {allow: $pub}, subscribe: {allow: $sub}}"
fi
entry+="}"

mkdir -p "$(dirname "$file")"
tmp=$(mktemp "$file.XXXXXX")
trap 'rm -f "$tmp"' EXIT
{
  echo "# NATS users of the p2es account: made by deploy/nats/add-user.sh, one user per line."
  echo "users: ["
  if [[ -f $file ]]; then
    grep '^{user: "' "$file" | grep -vF "{user: \"$name\"," || true
  fi
  echo "$entry"
  echo "]"
} > "$tmp"
# 644: the NATS container may run as another user; the file holds only salted hashes
chmod 644 "$tmp"
mv "$tmp" "$file"
trap - EXIT
if [[ $generated == 1 ]]; then
  echo "added $name to $file; password: $password"
else
  echo "added $name to $file"
fi
