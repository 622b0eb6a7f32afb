#!/bin/sh
# One-shot preparation of the OPC UA application instance certificates (docs/security.md).
#
#   pki-init.sh own PKI_DIR APP_URI NAME HOST...   create PKI_DIR's certificate and key once
#                                                  (never replaced: rotation is a deliberate step)
#   pki-init.sh cross PKI_A PKI_B                  trust A's certificate in B and B's in A (the
#                                                  simulated PLC and the bridge on one host only:
#                                                  a real PLC's trust exchange is done by hand)
#   pki-init.sh compose                            the compose stack's step (service pki-init, run
#                                                  as root): both certificates, the cross-trust,
#                                                  the secrets files handed to the `pilot` user
#
# The `pilot` command is taken from PATH. Folders are 0700, keys 0600 from creation (umask 077).
set -eu
umask 077

own() {
  pki="$1" uri="$2" name="$3"
  shift 3
  if [ -f "$pki/own/cert.der" ]; then
    echo "pki-init: $pki/own/cert.der exists, kept"
    return 0
  fi
  hosts=""
  for h in "$@"; do hosts="$hosts --host $h"; done
  # shellcheck disable=SC2086  # one --host per word
  pilot opcua certs --pki "$pki" --app-uri "$uri" --name "$name" --days "${PILOT_CERT_DAYS:-730}" $hosts
}

trust() {  # trust FROM_PKI INTO_PKI: FROM's own certificate into INTO/trusted/<name of FROM>.der
  mkdir -p "$2/trusted"
  cp "$1/own/cert.der" "$2/trusted/$(basename "$1").der"
  chmod 644 "$2/trusted/$(basename "$1").der"
  echo "pki-init: $2 trusts $1/own/cert.der"
}

cross() {
  trust "$1" "$2"
  trust "$2" "$1"
}

compose() {
  own /state/plc-sim/pki urn:pilot-line:plc-sim plc-sim plc-sim localhost 127.0.0.1
  own /state/bridge/pki urn:pilot-line:bridge bridge bridge localhost 127.0.0.1
  cross /state/plc-sim/pki /state/bridge/pki
  for f in opcua-users opcua-bridge-password; do
    install -o pilot -g pilot -m 0400 "/run/secrets/$f" "/state/secrets/$f"
  done
  chown -R pilot:pilot /state/plc-sim /state/bridge /state/secrets
  chmod 0700 /state/plc-sim /state/bridge
  chmod 0755 /state/secrets   # the mount point; the files in it are 0400, owner `pilot`
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  own) own "$@" ;;
  cross) cross "$@" ;;
  compose) compose ;;
  *) echo "usage: pki-init.sh own PKI_DIR APP_URI NAME HOST... | cross PKI_A PKI_B | compose" >&2; exit 2 ;;
esac
