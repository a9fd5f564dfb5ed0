#!/usr/bin/env bash
# Slipway quick start: a CI server on the embedded default (SQLite + an in-process
# runner with the local backend), and a plain git repository whose pushes trigger runs
# through its post-receive hook (`slipway hook`). Pushes the example shell project,
# follows run #1 to the end and prints its stages and a log.
#
#   bash examples/quickstart.sh            # then look around in the printed directory
#
# Environment: SLIPWAY (binary, default target/release/slipway, built if missing),
# SLIPWAY_QUICKSTART_DIR (work dir, default a new temp dir), SLIPWAY_QUICKSTART_PORT
# (default 8080; if another process holds it, the script stops at once and says so),
# SLIPWAY_QUICKSTART_KEEP=1 to leave the server running.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
slipway=${SLIPWAY:-$root/target/release/slipway}
if [ ! -x "$slipway" ]; then
  cargo build --release --manifest-path "$root/Cargo.toml" -p server --bin slipway
fi
work=${SLIPWAY_QUICKSTART_DIR:-$(mktemp -d)}
port=${SLIPWAY_QUICKSTART_PORT:-8080}
server="http://127.0.0.1:$port"
repo=demo/shell-project
export SLIPWAY_DATA_DIR="$work/data" SLIPWAY_LISTEN="127.0.0.1:$port"
mkdir -p "$work/forge"

say() { printf '\n== %s\n' "$*"; }

say "starting slipway server on $server (data in $work/data)"
"$slipway" server > "$work/server.log" 2>&1 &
server_pid=$!
stop() { kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true; }
[ "${SLIPWAY_QUICKSTART_KEEP:-}" = 1 ] || trap stop EXIT
# Ready when the server started here says it listens on the port and the port answers.
# It binds the port before anything else, so when another process holds the port it
# exits at once and this stops, instead of talking to a server that is not ours.
ours() { grep -F "slipway listening" "$work/server.log" | grep -qF "addr=127.0.0.1:$port"; }
ready=
for _ in $(seq 1 300); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    cat "$work/server.log" >&2
    echo "quickstart: the server did not start (is port $port taken by another process? set SLIPWAY_QUICKSTART_PORT to a free one)" >&2
    exit 1
  fi
  if ours && curl -fsS "$server/readyz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  cat "$work/server.log" >&2
  echo "quickstart: the server started here did not become ready on port $port within 30 s" >&2
  exit 1
fi

say "a plain git repository, registered with a post-receive hook"
bare="$work/forge/shell-project.git"
git init -q --bare "$bare"
"$slipway" repo add "$repo" --forge git --clone-url "$bare" > "$work/repo.txt"
hook_token=$("$slipway" token create post-receive --scope hook --repo "$repo")
admin_token=$("$slipway" token create quickstart --scope admin)
cat > "$bare/hooks/post-receive" <<EOF
#!/bin/sh
# Tells Slipway about every pushed ref (old new ref lines on stdin).
SLIPWAY_TOKEN='$hook_token' exec '$slipway' hook --server '$server' --repo '$repo'
EOF
chmod +x "$bare/hooks/post-receive"
echo "registered $repo; hook installed in $bare/hooks/post-receive"

say "git push"
git clone -q "$bare" "$work/checkout" 2>/dev/null
cp -a "$here/shell-project/." "$work/checkout/"
(
  cd "$work/checkout"
  git add -A
  git -c user.name=Dev -c user.email=dev@example.com commit -qm "First commit"
  git push origin HEAD:main 2>&1 | sed 's/^/  /'
)

say "following run #1"
api() { curl -fsS -H "Authorization: Bearer $admin_token" "$server/api/repos/$repo/$1"; }
status=pending
for _ in $(seq 1 600); do
  status=$(api runs/1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["run"]["status"])' 2>/dev/null || echo pending)
  case $status in pending|running) sleep 0.2 ;; *) break ;; esac
done
api runs/1 | python3 -c '
import json, sys
d = json.load(sys.stdin)
for s in d["stages"]:
    steps = ", ".join("%s=%s" % (t["name"], t["status"]) for t in s["steps"])
    print("  %-28s %-10s %s" % (s["key"], s["status"], steps))
'
last=$(api runs/1 | python3 -c '
import json, sys
d = json.load(sys.stdin)
s = [s for s in d["stages"] if s["key"] == "package"][0]
print(s["id"])')
echo "  log of package / step 0:"
api "runs/1/stages/$last/steps/0/logs.txt" | sed 's/^/    /'
echo
echo "run #1: $status"
[ "${SLIPWAY_QUICKSTART_KEEP:-}" = 1 ] && echo "server still running (pid $server_pid); admin token: $admin_token"
[ "$status" = success ]
