#!/bin/sh
# The "backend": answers one request on stdin.
read -r request
echo "200 OK: $request"
