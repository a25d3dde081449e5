#!/bin/bash
# Instructions per cached `GET /v1/products/{id}` of one example-api server configuration,
# counted by callgrind (deterministic, unlike req/s on a shared machine): the server runs under
# valgrind, wrk warms it up, counters are zeroed, wrk drives it for 20 s, the counters are dumped
# and divided by the requests wrk completed. Export threads are counted too.
#
#   scripts/callgrind-cached-get.sh NAME [ENV=VALUE ...]
#   e.g. scripts/callgrind-cached-get.sh off OTEL_EXPORTER_OTLP_ENDPOINT=
#        scripts/callgrind-cached-get.sh sampled OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
#            OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.0625
# Needs valgrind and wrk (apt-get install valgrind wrk), a release build
# (cargo build --release -p example-api) and, for telemetry on, an OTLP receiver (redline).
set -euo pipefail
NAME=$1; shift
EXE=${EXE:-target/release/example-api}
OUT=${OUT:-/tmp/callgrind-cached-get}
mkdir -p "$OUT"; rm -rf "$OUT/$NAME".*
PORT=$((20000 + RANDOM % 10000))
env "$@" RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/$NAME.out" \
    "$EXE" serve --addr 127.0.0.1:$PORT --admin-addr 127.0.0.1:0 --rate-limit 1000000000 \
    --seed-products 1000 --db "$OUT/$NAME.db" > "$OUT/$NAME.log" 2>&1 &
VG=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null && break; sleep 1; done
wrk -t1 -c4 -d5s "http://127.0.0.1:$PORT/v1/products/1" > /dev/null
callgrind_control -z $VG > /dev/null
wrk -t1 -c4 -d20s "http://127.0.0.1:$PORT/v1/products/1" > "$OUT/$NAME.wrk"
callgrind_control -d $VG > /dev/null 2>&1
sleep 1
kill -INT $VG; wait $VG 2> /dev/null || true
REQUESTS=$(awk '/requests in/ {print $1}' "$OUT/$NAME.wrk")
INSTRUCTIONS=$(grep -h -E "^(summary|totals):" "$OUT/$NAME.out".* | awk '{print $2}' | sort -n | tail -1)
echo "$NAME: $REQUESTS requests, $((INSTRUCTIONS / REQUESTS)) instructions per request"
