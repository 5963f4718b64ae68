#!/usr/bin/env bash
# The fresh-clone set-up, as a new user does it: clone, `npm install`, then the README's commands
# through npx — `--help` twice (the first npx run installs the project into npx's cache and runs
# its build scripts again; that must leave the build usable) and a short `serve` with a qemu-io
# write/read round trip.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true # its status is SIGTERM's, not ours
  fi
  rm -rf "$work"
}
trap cleanup EXIT

git clone -q "$repo" "$work/nbd-mirror"
cd "$work/nbd-mirror"
npm install --no-audit --no-fund
npx nbd-mirror --help >/dev/null
npx nbd-mirror --help | head -n 1

npx nbd-mirror serve --listen 127.0.0.1:0 --export disk="$work/disk.img" --size 64M >"$work/serve.log" 2>&1 &
server=$!
port=""
for _ in $(seq 1 300); do # at most 30 s
  port="$(grep -o '"msg":"listening"' -m1 "$work/serve.log" >/dev/null && grep -o '"port":[0-9]*' -m1 "$work/serve.log" | cut -d: -f2 || true)"
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; echo "fresh clone: serve exited early" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/serve.log"; echo "fresh clone: serve did not listen within 30 s" >&2; exit 1; }
qemu-io -f raw "nbd://127.0.0.1:$port/disk" -c 'write -P 0x5a 0 1M' -c 'read -P 0x5a 0 1M' | tee "$work/qemu-io.out"
grep -q 'read 1048576/1048576 bytes' "$work/qemu-io.out"
grep -q 'Pattern verification failed' "$work/qemu-io.out" && { echo "fresh clone: read back the wrong data" >&2; exit 1; }
npx nbd-mirror --help >/dev/null # still works with the server running
echo "fresh clone: npm install, npx nbd-mirror --help twice, serve + qemu-io round trip: ok"
