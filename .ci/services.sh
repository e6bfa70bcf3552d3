#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and RabbitMQ answer on loopback; install and start them where missing.
# The tests fail (not skip) under CI=true when any of them is unreachable.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_pg_connections() {
  # The concurrency tests open 100+ connections per xdist worker (1,000 concurrent withdrawals).
  local want=400 have
  have=$(psql -h 127.0.0.1 -U root -d postgres -Atc "SHOW max_connections" 2>/dev/null) || return 0
  [ "${have:-0}" -ge "$want" ] && return 0
  echo "raising PostgreSQL max_connections from $have to $want"
  psql -h 127.0.0.1 -U root -d postgres -qc "ALTER SYSTEM SET max_connections = $want" || return 0
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main restart || true
  for _ in $(seq 30); do up 5432 && break; sleep 1; done
}

need=()
up 5432 || need+=(postgresql)
up 6379 || need+=(redis-server)
up 5672 || need+=(rabbitmq-server)
if [ ${#need[@]} -eq 0 ]; then ensure_pg_connections; exit 0; fi

echo "starting: ${need[*]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" postgresql-contrib >/dev/null
  fi
fi
for p in "${need[@]}"; do
  case $p in
    postgresql)
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
      for _ in $(seq 30); do up 5432 && break; sleep 1; done
      # Tests connect as root over TCP with trust auth, as on the development machines.
      su postgres -c "psql -qc \"DO \\\$\\\$BEGIN CREATE ROLE root SUPERUSER LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END\\\$\\\$\"" || true
      ;;
    redis-server)
      redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true ;;
    rabbitmq-server)
      rabbitmq-server -detached || true
      for _ in $(seq 60); do up 5672 && break; sleep 1; done ;;
  esac
done
ensure_pg_connections
exit 0
