#!/usr/bin/env bash
# Run the worker with the self-hosted TTS server beside it.
#
#   scripts/run-local.sh [dev|start|console] [worker args...]
#
# The TTS server is started only when KNOWLITHIC_TTS_SERVER (from the environment or .env)
# is unset or points at this machine's port 8000; a hosted Knowlithic URL is used as is.
# The server is stopped when the worker exits.
set -euo pipefail
cd "$(dirname "$0")/.."

command="${1:-dev}"
shift || true

setting() {  # the value of $1 from the environment, else from .env
  local name="$1"
  if [[ -n "${!name:-}" ]]; then
    printf '%s' "${!name}"
  elif [[ -f .env ]]; then
    sed -n "s/^${name}=//p" .env | tail -n 1 | tr -d "\"'"
  fi
}

tts_url="$(setting KNOWLITHIC_TTS_SERVER)"
tts_url="${tts_url:-$(setting TTS_SERVER_URL)}"
server_pid=""
case "${tts_url:-ws://localhost:8000}" in
  ws://localhost:8000|ws://localhost:8000/|ws://127.0.0.1:8000|ws://127.0.0.1:8000/|http://localhost:8000|http://127.0.0.1:8000)
    echo "starting the local TTS server on :8000 (logs: tts_server.log)"
    python -m tts_server --host 127.0.0.1 --port 8000 >tts_server.log 2>&1 &
    server_pid=$!
    trap 'kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null' EXIT
    for _ in $(seq 1 100); do
      if python - <<'PY' 2>/dev/null; then break; fi
import urllib.request
urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=1)
PY
      if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "the TTS server failed to start; see tts_server.log" >&2
        exit 1
      fi
      sleep 0.2
    done
    ;;
  *)
    echo "using the TTS server at $tts_url"
    ;;
esac

python agent.py "$command" "$@"
