# Word helpers used by the tests.
count_words() { set -- $1; echo $#; }
upper() { printf '%s\n' "$1" | tr '[:lower:]' '[:upper:]'; }
