#!/bin/sh
# count: a nuage function written in shell, to show that any executable is a function.
#
# For each line read on stdin, answer `<n> <line>`, where n counts the lines this process
# has answered: in pool mode a warm instance keeps counting across requests and
# connections; in spawn mode every connection starts again at 1. Exit at end of input.
#
#   $ printf 'a\nb\n' | functions/count/count.sh
#   1 a
#   2 b
n=0
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  printf '%d %s\n' "$n" "$line"
done
