#!/usr/bin/env bash
# What [telemetry] costs: edge CPU per connection under a handshake storm (handshake + upgrade +
# one echo + close), telemetry off vs on, alternated ROUNDS times. Release build; the edge on
# CPU 0, wssbench on CPU 1; an OTLP/HTTP sink on loopback that answers 200 and counts.
# Prints per round: the whole process and the core threads alone, in us per connection, and the
# exporter thread's CPU ticks. Quote medians: one round is noise on a shared machine.
#   perf-scripts/otel-overhead.sh [ROUNDS] [RATE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${1:-4}
RATE=${2:-400}
cargo build -q --release -p wssedge -p wssbench
B=$PWD/target/release
W=$(mktemp -d /tmp/otel-overhead.XXXXXX)
cat > "$W/sink.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$W/sink.py" 24318 & SINK=$!
trap 'kill $SINK 2>/dev/null; rm -rf "$W"' EXIT
printf '' > "$W/off.toml"
printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:24318"\n' > "$W/on.toml"
threads_ticks() { # PID NAME-PATTERN: utime+stime of the matching threads
    cat /proc/"$1"/task/*/stat | awk -v p="$2" '$2 ~ p {t+=$14+$15} END {print t+0}'
}
for round in $(seq "$ROUNDS"); do
    for mode in off on; do
        "$B/wssedge" serve --config "$W/$mode.toml" --cpus 0 --state-dir "$W/dev" \
            --listen 127.0.0.1:28443 --admin 127.0.0.1:29901 > "$W/edge.out" 2> "$W/edge.err" &
        EP=$!
        for _ in $(seq 100); do grep -q listening "$W/edge.out" && break; sleep 0.1; done
        p0=$(threads_ticks $EP .); c0=$(threads_ticks $EP wssedge-core)
        timeout 60 "$B/wssbench" storm --url wss://127.0.0.1:28443/ --ca "$W/dev/dev-ca.pem" \
            --rate "$RATE" --duration 10 --warmup 1 --cpus 1 > "$W/bench.out" 2>&1
        p1=$(threads_ticks $EP .); c1=$(threads_ticks $EP wssedge-core); x1=$(threads_ticks $EP otlp)
        ok=$(grep -o 'ok=[0-9]*' "$W/bench.out" | head -1 | cut -d= -f2)
        kill -TERM $EP; wait $EP 2>/dev/null || true
        echo "round=$round telemetry=$mode connections=$ok process_us_per_conn=$(( (p1-p0) * 10000 / ok )) core_us_per_conn=$(( (c1-c0) * 10000 / ok )) exporter_ticks=$x1"
    done
done
