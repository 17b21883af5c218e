#!/usr/bin/env bash
# Run the worker with the self-hosted TTS server beside it.
#
#   scripts/run-local.sh [dev|start|console] [worker args...]
#
# The TTS server is started only when KNOWLITHIC_TTS_SERVER (from the environment or .env)
# is unset (port 8000) or points at a port of this machine; a hosted Knowlithic URL is used as
# is.  The server is stopped when the worker exits.  When the port is already taken, this
# checkout's own live server of the same version is reused (and left running); anything else
# there (another program, an older server) is reported and the script exits 1.
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
tts_url="${tts_url:-ws://localhost:8000}"
if [[ "$tts_url" =~ ^(ws|http)://(localhost|127\.0\.0\.1):([0-9]+)/?$ ]]; then
  port="${BASH_REMATCH[3]}"
  occupant=0
  python -m tts_server.occupant --port "$port" || occupant=$?
  case "$occupant" in
    0)
      echo "starting the local TTS server on :$port (logs: tts_server.log)"
      python -m tts_server --host 127.0.0.1 --port "$port" >tts_server.log 2>&1 &
      server_pid=$!
      trap 'kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null' EXIT
      for _ in $(seq 1 100); do
        if python -m tts_server.healthcheck --url "http://127.0.0.1:$port/health" --timeout 1; then
          break
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
          echo "the TTS server failed to start; see tts_server.log" >&2
          exit 1
        fi
        sleep 0.2
      done
      ;;
    10) ;;  # our own server, already running: it said so
    *) exit 1 ;;  # something else holds the port: it said what
  esac
else
  echo "using the TTS server at ${tts_url%%\?*}"  # no query: it may carry a key
fi

python agent.py "$command" "$@"
