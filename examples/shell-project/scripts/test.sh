#!/bin/sh
# Tiny test suite for src/words.sh.
set -eu
. ./src/words.sh
fail=0
check() { if [ "$1" = "$2" ]; then echo "pass: $3"; else echo "FAIL: $3 (got '$1', want '$2')"; fail=1; fi; }
check "$(count_words "a b c")" 3 "three words"
check "$(count_words "")" 0 "empty"
check "$(upper "abc")" ABC "upper"
echo "mode: ${MODE:-none}"
exit $fail
