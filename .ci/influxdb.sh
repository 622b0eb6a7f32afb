#!/usr/bin/env bash
# A throw-away InfluxDB 1.x for the tests and benchmarks: Debian's `influxdb` package, bound to
# 127.0.0.1, data in a temporary folder.
#
#   .ci/influxdb.sh start              install (apt-get, once) and start; prints the URL
#   .ci/influxdb.sh stop               stop and delete the data
#   .ci/influxdb.sh stop --keep-data   stop only: the next `start` reopens the same data
#                                      (a database restart, as in the outage test)
#   .ci/influxdb.sh status             prints the URL if it answers /ping, else exits 1
#
# Idempotent: `start` on a running instance prints its URL, `stop` on a stopped one does nothing.
# Environment: PILOT_CI_INFLUX_PORT (HTTP port, default 18086; the RPC port is HTTP port + 2),
#              PILOT_CI_INFLUX_STATE (state folder, default ${TMPDIR:-/tmp}/pilot-influxdb-<port>).
set -euo pipefail

PORT="${PILOT_CI_INFLUX_PORT:-18086}"
RPC_PORT=$((PORT + 2))
STATE="${PILOT_CI_INFLUX_STATE:-${TMPDIR:-/tmp}/pilot-influxdb-${PORT}}"
URL="http://127.0.0.1:${PORT}"

log() { echo "influxdb.sh: $*" >&2; }

ping_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 1 "${URL}/ping" 2>/dev/null
  else
    python3 -c "import sys,urllib.request as u; sys.exit(u.urlopen(sys.argv[1], timeout=1).status != 204)" \
      "${URL}/ping" 2>/dev/null
  fi
}

running_pid() {
  [[ -f "${STATE}/pid" ]] || return 1
  local pid
  pid="$(cat "${STATE}/pid")"
  kill -0 "${pid}" 2>/dev/null || return 1
  echo "${pid}"
}

install_influxdb() {
  local pkgs=()
  command -v influxd >/dev/null 2>&1 || pkgs+=(influxdb)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  [[ ${#pkgs[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null 2>&1 || { log "missing ${pkgs[*]} and no apt-get"; exit 1; }
  local sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  log "installing Debian's ${pkgs[*]}"
  ${sudo} apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  command -v influxd >/dev/null 2>&1 || { log "influxd still missing after apt-get"; exit 1; }
}

write_config() {
  cat >"${STATE}/influxdb.conf" <<EOF
reporting-disabled = true
bind-address = "127.0.0.1:${RPC_PORT}"
[meta]
  dir = "${STATE}/data/meta"
[data]
  dir = "${STATE}/data/data"
  wal-dir = "${STATE}/data/wal"
  query-log-enabled = false
  index-version = "inmem"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:${PORT}"
  log-enabled = false
  max-body-size = 25000000
[continuous_queries]
  enabled = false
  log-enabled = false
[ifql]
  enabled = false
[logging]
  level = "warn"
EOF
}

start() {
  if running_pid >/dev/null && ping_ok; then
    echo "${URL}"
    return 0
  fi
  install_influxdb
  mkdir -p "${STATE}/data"
  write_config
  nohup influxd run -config "${STATE}/influxdb.conf" >"${STATE}/influxd.log" 2>&1 &
  echo $! >"${STATE}/pid"
  for _ in $(seq 1 300); do
    if ping_ok; then
      echo "${URL}"
      return 0
    fi
    if ! running_pid >/dev/null; then
      log "influxd exited; its log:"; tail -20 "${STATE}/influxd.log" >&2; exit 1
    fi
    sleep 0.1
  done
  log "influxd did not answer ${URL}/ping within 30 s"; tail -20 "${STATE}/influxd.log" >&2
  exit 1
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill "${pid}"
    for _ in $(seq 1 100); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "${pid}" 2>/dev/null && kill -9 "${pid}"
  fi
  rm -f "${STATE}/pid"
  if [[ "${1:-}" != "--keep-data" ]]; then
    rm -rf "${STATE}"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  status) running_pid >/dev/null && ping_ok && echo "${URL}" ;;
  *) echo "usage: $0 start | stop [--keep-data] | status" >&2; exit 2 ;;
esac
