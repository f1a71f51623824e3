#!/usr/bin/env bash
# toolchain-check.sh: proves that the drift check fails on a proto edited without regenerating, and that
# buf breaking fails on a removed field. Each case must fail; the script fails if one passes.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
buf="$here/bin/tools/buf"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# 1. Drift: a new field in a proto, gen/ left as it is.
mkdir -p "$scratch/drift"
cp -r "$here/proto" "$here/buf.yaml" "$here/buf.gen.yaml" "$here/gen" "$scratch/drift/"
f="$scratch/drift/proto/cloudvlan/node/v1/netmap.proto"
printf '\n// DriftProbe exists only in this scratch copy.\nmessage DriftProbe {\n  // A field.\n  string probe = 1;\n}\n' >>"$f"
if "$here/build/ci/check-generate.sh" "$scratch/drift" >/dev/null 2>&1; then
  echo "toolchain-check: FAIL: the drift check passed on an edited proto" >&2; exit 1
fi
echo "toolchain-check: ok: the drift check fails on a proto edited without regenerating"

# 2. Breaking: remove a field in a second commit, compare against the first.
mkdir -p "$scratch/breaking"
cp -r "$here/proto" "$here/buf.yaml" "$scratch/breaking/"
cd "$scratch/breaking"
git init -q . && git -c user.email=ci@cloudvlan.invalid -c user.name=ci add -A
git -c user.email=ci@cloudvlan.invalid -c user.name=ci commit -qm base
"$buf" breaking --against '.git#ref=HEAD' || { echo "toolchain-check: FAIL: unchanged protos reported as breaking" >&2; exit 1; }
sed -i '/^  string hostname = 4 \[/,/\];$/d' proto/cloudvlan/node/v1/enrollment.proto
grep -q 'hostname = 4' proto/cloudvlan/node/v1/enrollment.proto && { echo "toolchain-check: FAIL: probe edit did not apply" >&2; exit 1; }
git -c user.email=ci@cloudvlan.invalid -c user.name=ci commit -qam "remove a field"
if "$buf" breaking --against '.git#ref=HEAD~1' >"$scratch/breaking.txt" 2>&1; then
  echo "toolchain-check: FAIL: buf breaking passed on a removed field" >&2; exit 1
fi
grep -q 'hostname' "$scratch/breaking.txt" || { echo "toolchain-check: FAIL: unexpected breaking output:" >&2; cat "$scratch/breaking.txt" >&2; exit 1; }
echo "toolchain-check: ok: buf breaking fails on a removed field: $(head -1 "$scratch/breaking.txt")"
