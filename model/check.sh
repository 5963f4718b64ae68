#!/usr/bin/env bash
# Model-checks replication.pml exhaustively with spin, then proves the checks bite: each
# mutant (a protocol rule taken out) must be caught. Usage: model/check.sh [MAXW] [MAXF]
# (client writes, faults; default 4 and 3: ~12 M states, ~50 s of CPU, ~750 MB). Needs spin and gcc.
# Works in a temporary folder: no pan files or counterexample trails are left in the tree.
set -euo pipefail
cd "$(dirname "$0")"
maxw="${1:-4}"
maxf="${2:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp replication.pml "$work/"
cd "$work"

# verify NAME [-DFLAG]: prints spin's summary line, returns the error count
verify() {
  local name="$1"
  shift
  rm -f pan pan.* ./*.trail
  spin "$@" -DMAXW="$maxw" -DMAXF="$maxf" -a replication.pml >/dev/null
  gcc -O2 -DSAFETY -DCOLLAPSE -w -o pan pan.c
  local out
  out="$(./pan -m1000000 2>&1)"
  local errors states
  errors="$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' <<<"$out")"
  states="$(sed -n 's/^ *\([0-9]*\) states, stored.*/\1/p' <<<"$out")"
  echo "$name: $states states, $errors errors$(grep -o 'assertion violated.*' <<<"$out" | head -1 | sed 's/^/ — /')" >&2
  echo "$errors"
}

[ "$(verify "model (writes $maxw, faults $maxf)")" = 0 ] || { echo "FAIL: the model violates an invariant" >&2; exit 1; }
for mutant in NO_WITNESS NO_BITS_ON_LINK_LOSS NO_ACTIVITY_LOG NO_OVERLAP_ORDER LEAVE_KEEPS_GRANT LEAVE_NO_CLAIM NO_CONSISTENT_SOURCE NO_FULL_SYNC BRAND_NEW_ALONE; do
  [ "$(verify "mutant $mutant" -DMUTANT_$mutant)" != 0 ] || { echo "FAIL: mutant $mutant was not caught: an invariant no longer bites" >&2; exit 1; }
done
echo "model check passed" >&2
