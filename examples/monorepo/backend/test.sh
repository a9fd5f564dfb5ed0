#!/bin/sh
set -eu
out=$(echo "GET /" | sh ./server.sh)
[ "$out" = "200 OK: GET /" ] && echo "backend: $out"
