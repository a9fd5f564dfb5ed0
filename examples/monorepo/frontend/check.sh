#!/bin/sh
set -eu
grep -q "export function title" app.js && echo "frontend: exports ok"
