#!/usr/bin/env bash
# A small private CA for the compose stack's TLS, with openssl only (deploy/tls.md explains it).
#
#   deploy/tls/pki.sh init [NAME...]        the CA, its (empty) CRL and the broker's certificate
#                                           for NAMEs (default: mosquitto localhost)
#   deploy/tls/pki.sh server NAME...        issue a new broker certificate (rotation)
#   deploy/tls/pki.sh device ID [DAYS]      a device certificate, CN = patient id (= its MQTT
#                                           username), DAYS valid (default 365); the previous one
#                                           of ID is kept as devices/ID.old.pem
#   deploy/tls/pki.sh revoke ID|CERT.pem    revoke a device certificate (ID: its current one) and
#                                           rewrite the CRL
#   deploy/tls/pki.sh crl                   rewrite the CRL (it expires after 365 days)
#   deploy/tls/pki.sh nats N [NAME...]      scale-out profile: the certificate of NATS node nats-N
#                                           (names nats-N + NAMEs; server and client use: its
#                                           client, MQTT and route listeners, routes are mutual TLS)
#
# After server / revoke / crl: `docker compose kill -s SIGHUP mosquitto` (Mosquitto re-reads its
# certificates and the CRL); after nats: `docker compose kill -s SIGHUP nats-N` (a config reload
# re-reads them).  Files (directory $P2ES_PKI_DIR, default deploy/secrets):
#   tls_ca.pem              the CA certificate (public): every client's mqtt_ca_file
#   tls_crl.pem             the revocation list the broker checks device certificates against
#   mosquitto_cert.pem/.key the broker's certificate and key
#   nats_N_cert.pem/_key.pem NATS node N's certificate and key (scale-out profile)
#   devices/ID.pem/.key     device certificates and keys: hand them to the device, then delete
#                           the key here
#   pki/                    the CA's private key and database: keep it off the broker host
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "$0: error: $*" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${P2ES_PKI_DIR:-$here/../secrets}
PKI=$DIR/pki
CNF=$PKI/openssl.cnf
command -v openssl > /dev/null || die "needs openssl"
umask 077
export P2ES_SAN=DNS:unused  # the config names it; server() sets the broker's names

write_cnf() {
  cat > "$CNF" <<CNF
[ ca ]
default_ca = p2es
[ p2es ]
dir = $PKI
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
certificate = $DIR/tls_ca.pem
private_key = \$dir/ca.key
serial = \$dir/serial
crlnumber = \$dir/crlnumber
default_md = sha256
default_days = 365
default_crl_days = 365
policy = any_cn
unique_subject = no
copy_extensions = none
[ any_cn ]
commonName = supplied
[ device_ext ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
[ server_ext ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = \$ENV::P2ES_SAN
CNF
}

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2> /dev/null; }

sign() {  # sign CSR OUT EXT DAYS
  openssl ca -batch -notext -config "$CNF" -extensions "$3" \
    -days "$4" -in "$1" -out "$2" 2> "$PKI/last.log" || { cat "$PKI/last.log" >&2; die "openssl ca failed"; }
}

gencrl() {
  openssl ca -config "$CNF" -gencrl -out "$DIR/tls_crl.pem" 2> "$PKI/last.log" \
    || { cat "$PKI/last.log" >&2; die "openssl ca -gencrl failed"; }
  chmod 644 "$DIR/tls_crl.pem"
}

server() {  # server NAME...
  [[ $# -ge 1 ]] || die "server needs at least one host name"
  local san="" n
  for n in "$@"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="${san:+,}IP:$n"; else san+="${san:+,}DNS:$n"; fi
  done
  newkey "$PKI/server.key.new"
  openssl req -new -key "$PKI/server.key.new" -subj "/CN=$1" -out "$PKI/server.csr"
  P2ES_SAN=$san sign "$PKI/server.csr" "$PKI/server.pem.new" server_ext 825
  mv "$PKI/server.key.new" "$DIR/mosquitto_key.pem"
  mv "$PKI/server.pem.new" "$DIR/mosquitto_cert.pem"
  # the broker drops root before it re-reads them on SIGHUP (as for mosquitto_passwd)
  chmod 644 "$DIR/mosquitto_cert.pem" "$DIR/mosquitto_key.pem"
  echo "broker certificate for $san: $DIR/mosquitto_cert.pem (key mosquitto_key.pem)"
}

nats_node() {  # nats N [NAME...]
  local n=${1:-} x
  [[ $n =~ ^[1-9][0-9]?$ ]] || die "nats needs a node number (1, 2, 3, ...), got '$n'"
  shift
  local name=nats-$n file=nats_$n san="DNS:nats-$n"
  for x in "$@"; do
    if [[ $x =~ ^[0-9.]+$ || $x == *:* ]]; then san+=",IP:$x"; else san+=",DNS:$x"; fi
  done
  if ! grep -q '^\[ nats_ext \]' "$CNF"; then  # a CA made before the scale-out profile had TLS
    printf '%s\n' '[ nats_ext ]' 'basicConstraints = critical,CA:false' \
      'keyUsage = critical,digitalSignature,keyEncipherment' 'extendedKeyUsage = serverAuth,clientAuth' \
      'authorityKeyIdentifier = keyid' 'subjectAltName = $ENV::P2ES_SAN' >> "$CNF"
  fi
  newkey "$PKI/$name.key.new"
  openssl req -new -key "$PKI/$name.key.new" -subj "/CN=$name" -out "$PKI/$name.csr"
  P2ES_SAN=$san sign "$PKI/$name.csr" "$PKI/$name.pem.new" nats_ext 825
  rm -f "$PKI/$name.csr"
  mv "$PKI/$name.key.new" "$DIR/${file}_key.pem"
  mv "$PKI/$name.pem.new" "$DIR/${file}_cert.pem"
  # as the broker's: the server may read them as another user after a reload
  chmod 644 "$DIR/${file}_cert.pem" "$DIR/${file}_key.pem"
  echo "NATS node $name certificate for $san: $DIR/${file}_cert.pem (key ${file}_key.pem)"
}

init() {
  [[ ! -e $PKI/ca.key ]] || die "$PKI/ca.key exists: the CA is already made"
  mkdir -p "$PKI/newcerts" "$DIR/devices"
  : > "$PKI/index.txt"
  echo 1000 > "$PKI/serial"
  echo 1000 > "$PKI/crlnumber"
  write_cnf
  newkey "$PKI/ca.key"
  openssl req -x509 -new -key "$PKI/ca.key" -days 3650 -subj "/CN=p2es ward CA" \
    -addext "basicConstraints=critical,CA:true,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$DIR/tls_ca.pem"
  chmod 644 "$DIR/tls_ca.pem"
  gencrl
  echo "CA: $DIR/tls_ca.pem (key $PKI/ca.key)"
  if [[ $# -eq 0 ]]; then set -- mosquitto localhost; fi
  server "$@"
}

device() {  # device ID [DAYS]
  local id=${1:-} days=${2:-365}
  [[ $id =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "'$id' is not a valid patient id ([A-Za-z0-9_.-]{1,64})"
  [[ $days =~ ^[0-9]+$ && $days -ge 1 ]] || die "DAYS must be a positive number, got '$days'"
  [[ -e $PKI/ca.key ]] || die "no CA yet: run '$0 init' first"
  local d=$DIR/devices
  mkdir -p "$d"
  newkey "$d/$id.key.new"
  openssl req -new -key "$d/$id.key.new" -subj "/CN=$id" -out "$PKI/$id.csr"
  sign "$PKI/$id.csr" "$d/$id.pem.new" device_ext "$days"
  rm -f "$PKI/$id.csr"
  if [[ -e $d/$id.pem ]]; then
    mv "$d/$id.pem" "$d/$id.old.pem"
    rm -f "$d/$id.key"
  fi
  mv "$d/$id.key.new" "$d/$id.key"
  mv "$d/$id.pem.new" "$d/$id.pem"
  echo "device $id: $d/$id.pem, key $d/$id.key, serial $(openssl x509 -in "$d/$id.pem" -noout -serial | cut -d= -f2)"
}

revoke() {  # revoke ID|CERT.pem
  local cert=${1:-}
  [[ -n $cert ]] || die "revoke needs a patient id or a certificate file"
  [[ -f $cert ]] || cert=$DIR/devices/$1.pem
  [[ -f $cert ]] || die "no certificate $cert"
  openssl ca -config "$CNF" -revoke "$cert" 2> "$PKI/last.log" \
    || { cat "$PKI/last.log" >&2; die "openssl ca -revoke failed"; }
  gencrl
  echo "revoked serial $(openssl x509 -in "$cert" -noout -serial | cut -d= -f2); CRL rewritten: $DIR/tls_crl.pem"
}

cmd=${1:-}
[[ -n $cmd ]] || usage
shift
case $cmd in
  init) init "$@" ;;
  server) [[ -e $PKI/ca.key ]] || die "no CA yet: run '$0 init' first"; server "$@" ;;
  device) device "$@" ;;
  revoke) [[ -e $PKI/ca.key ]] || die "no CA yet: run '$0 init' first"; revoke "$@" ;;
  crl) [[ -e $PKI/ca.key ]] || die "no CA yet: run '$0 init' first"; gencrl; echo "CRL rewritten: $DIR/tls_crl.pem" ;;
  nats) [[ -e $PKI/ca.key ]] || die "no CA yet: run '$0 init' first"; nats_node "$@" ;;
  *) usage ;;
esac
