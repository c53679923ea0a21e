#!/usr/bin/env bash
# The demo from a fresh Debian/Ubuntu machine: set up, start a local mosquitto if none is
# listening on 127.0.0.1:1883, print every message with `streamd watch`, and run the
# daemon on configs/demo.yaml (vtest.avi, HOG people detector). Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh demo
CONFIG=${1:-configs/demo.yaml}
shift || true

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  conf=$(mktemp -d)/mosquitto.conf
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n' > "$conf"
  echo "demo: starting mosquitto on 127.0.0.1:1883"
  /usr/sbin/mosquitto -c "$conf" >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
fi

web_url=$(.venv/bin/python -c 'import sys; from streamd.config import load
w = load(sys.argv[1]).settings.web
print(f"http://{w.host}:{w.port}/" if w.enabled else "")' "$CONFIG" 2>/dev/null || true)
if [ -n "$web_url" ]; then
  echo "demo: live view at $web_url (open it in a browser while the demo runs)"
fi

.venv/bin/streamd watch -c "$CONFIG" --until-offline & pids+=($!)
sleep 1
.venv/bin/streamd run -c "$CONFIG" "$@"
sleep 1
