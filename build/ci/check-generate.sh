#!/usr/bin/env bash
# check-generate.sh [REPO]: regenerate REPO's protos into a scratch copy and fail if the committed gen/
# differs. The working tree is never modified.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
repo=$(cd "${1:-$here}" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r "$repo/proto" "$repo/buf.yaml" "$repo/buf.gen.yaml" "$scratch/"
mkdir -p "$scratch/bin" "$scratch/ui"
ln -s "$here/bin/tools" "$scratch/bin/tools"
ln -s "$here/ui/node_modules" "$scratch/ui/node_modules"
(cd "$scratch" && "$here/bin/tools/buf" generate)
status=0
for d in go ts; do
  if ! diff -r "$scratch/gen/$d" "$repo/gen/$d" >"$scratch/diff.txt" 2>&1; then
    echo "check-generate: gen/$d is stale: run 'make generate' and commit the result" >&2
    head -40 "$scratch/diff.txt" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "check-generate: gen/ matches proto/"
exit "$status"
