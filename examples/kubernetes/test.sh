#!/bin/sh
# The example's "test suite": proves the step ran on the node it asked for.
set -e
echo "running on $(uname -m)"
