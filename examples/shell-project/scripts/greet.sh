#!/bin/sh
# Greets whoever is named on the command line (default: world).
set -eu
name="${1:-world}"
[ -n "$name" ] || name=world
echo "${GREETING_PREFIX:-hello}, $name!"
