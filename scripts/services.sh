#!/usr/bin/env bash
# Brings up what Vigil's tests and benchmarks talk to, on a fresh machine:
# - Redis on 127.0.0.1:6379 (Debian's redis-server, installed if absent);
# - a three-node Redis Cluster on 127.0.0.1:7001-7003 (the same redis-server);
# - a Kafka-compatible broker on 127.0.0.1:9092: tansu 0.6.0 with its sqlite
#   storage engine (installed with cargo if absent; ~9 minutes the first time);
# - PostgreSQL on 127.0.0.1:5432 with a `test` database, for the review store
#   (Debian's postgresql, started or installed if absent; trust auth on
#   127.0.0.1).
# Services already answering are left alone. Idempotent; safe to run twice.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.services"
mkdir -p "$state"
export PATH="$HOME/.cargo/bin:$PATH"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port, name, seconds
  for _ in $(seq 1 "$3"); do
    if listening "$1"; then return 0; fi
    sleep 1
  done
  echo "services: $2 did not start listening on 127.0.0.1:$1 within $3 s" >&2
  return 1
}

# Redis
if listening 6379; then
  echo "services: redis already on 127.0.0.1:6379"
else
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "services: installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p "$state/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$state/redis" --logfile "$state/redis/redis.log"
  wait_for 6379 redis 30
  echo "services: started redis on 127.0.0.1:6379"
fi

# Redis Cluster: three primaries on 127.0.0.1:7001-7003 (cluster bus on
# 17001-17003), for the feature store's cluster backend and its conformance run.
cluster_ports="7001 7002 7003"
cluster_ok() { redis-cli -p 7001 cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
if cluster_ok; then
  echo "services: redis cluster already on 127.0.0.1:7001-7003"
else
  rejoining=0
  for port in $cluster_ports; do
    if ! listening "$port"; then
      mkdir -p "$state/cluster/$port"
      [ -s "$state/cluster/$port/nodes.conf" ] && rejoining=1
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
        --dir "$state/cluster/$port" --logfile "$state/cluster/$port/redis.log"
      wait_for "$port" "redis cluster node" 30
    fi
  done
  # Nodes restarted with their nodes.conf rejoin on their own within seconds.
  if [ "$rejoining" = 1 ]; then
    for _ in $(seq 1 10); do cluster_ok && break; sleep 1; done
  fi
  if ! cluster_ok; then
    # Nodes left half-joined by an earlier run are emptied first.
    for port in $cluster_ports; do
      redis-cli -p "$port" flushall >/dev/null 2>&1 || true
      redis-cli -p "$port" cluster reset hard >/dev/null
    done
    redis-cli --cluster create 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 \
      --cluster-replicas 0 --cluster-yes >"$state/cluster/create.log"
    for _ in $(seq 1 30); do cluster_ok && break; sleep 1; done
    cluster_ok || { echo "services: the redis cluster did not reach cluster_state:ok" >&2; exit 1; }
  fi
  echo "services: started a redis cluster on 127.0.0.1:7001-7003"
fi

# Kafka-compatible broker
if listening 9092; then
  echo "services: a broker is already on 127.0.0.1:9092"
else
  if ! command -v tansu >/dev/null 2>&1; then
    echo "services: installing tansu 0.6.0 (cargo install, several minutes)"
    cargo install --locked tansu@0.6.0 --features dynostore,libsql
  fi
  # The memory engine stalls consumers that resume inside a batch (shared/FINDINGS.md);
  # sqlite keeps records and committed offsets exactly.
  (cd "$state" && nohup tansu broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine sqlite://tansu.db >"$state/tansu.log" 2>&1 &)
  wait_for 9092 tansu 60
  echo "services: started tansu on 127.0.0.1:9092 (log: .services/tansu.log)"
fi

# PostgreSQL (the review store's tests): the machine's own when it answers.
if listening 5432; then
  echo "services: postgresql already on 127.0.0.1:5432"
else
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "services: installing postgresql"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q "^host all all 127.0.0.1/32 trust" "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  pg_ctlcluster "$version" main start || service postgresql start
  wait_for 5432 postgresql 60
  echo "services: started postgresql on 127.0.0.1:5432"
fi
if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null
  echo "services: created database test"
fi
