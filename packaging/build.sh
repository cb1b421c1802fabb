#!/usr/bin/env bash
# Build the opsbro .deb and .rpm from one staged tree, so both carry the same files.
#
#   packaging/build.sh                       cargo build --release, then both packages
#   packaging/build.sh --musl                static binary (x86_64-unknown-linux-musl) instead
#   packaging/build.sh --binary PATH         package this binary, build nothing (tests use the
#                                            debug binary: see tests/tests/packages.rs)
#   ... --config FILE                        ship FILE as the default /etc/opsbro/agent.yml
#                                            (default: etc/opsbro/agent.yml; for a site package)
#   ... --revision N                         package revision (default 1): an upgrade needs a
#                                            higher one
#   ... --out DIR                            where the packages go (default <target>/packages)
#   ... --fast                               faster, larger compression
#
# Needs cargo-deb and cargo-generate-rpm (`bash .ci/install-deps.sh` installs the pinned
# versions), strip (binutils) and gzip. The man pages and completions come from the binary itself
# (`opsbro manpages DIR`, `opsbro completions SHELL`); the shipped binary is stripped of its debug
# info here (the workspace's release profile keeps line tables for the benchmarks' profiles).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
config="etc/opsbro/agent.yml"
revision=1
out=""
fast=()
musl=false
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --config) config="$2"; shift 2 ;;
        --revision) revision="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --fast) fast=(--fast); shift ;;
        --musl) musl=true; shift ;;
        *) echo "usage: $0 [--musl | --binary PATH] [--config FILE] [--revision N] [--out DIR] [--fast]" >&2; exit 2 ;;
    esac
done
for tool in cargo-deb cargo-generate-rpm strip gzip; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run   bash .ci/install-deps.sh" >&2; exit 1; }
done

target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
if [ -z "$binary" ]; then
    if $musl; then
        # ring compiles C: with musl's compiler wrapper (Debian package musl-tools).
        command -v musl-gcc >/dev/null || { echo "musl-gcc is missing: apt-get install musl-tools" >&2; exit 1; }
        CC_x86_64_unknown_linux_musl=musl-gcc \
            cargo build --release --locked -p opsbro-cli --target x86_64-unknown-linux-musl
        binary="$target_dir/x86_64-unknown-linux-musl/release/opsbro"
    else
        cargo build --release --locked -p opsbro-cli
        binary="$target_dir/release/opsbro"
    fi
fi
[ -x "$binary" ] || { echo "$binary is not an executable" >&2; exit 1; }
out="$(realpath -m "${out:-$target_dir/packages}")"
version="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="opsbro-cli"))')"

# The staging target dir: both tools read `target/release/...` assets from <stage>/release.
stage="$out/stage"
rm -rf "$stage"
dist="$stage/release/dist"
mkdir -p "$dist/man" "$dist/completions"
strip --strip-unneeded --remove-section=.comment --remove-section=.note -o "$stage/release/opsbro" "$binary"
bin="$stage/release/opsbro"
"$bin" manpages "$dist/man" >/dev/null
gzip -9n "$dist/man"/*.1
"$bin" completions bash >"$dist/completions/opsbro.bash"
"$bin" completions zsh >"$dist/completions/_opsbro"
"$bin" completions fish >"$dist/completions/opsbro.fish"
install -m 644 "$config" "$dist/agent.yml"

# --no-build: the binary is already there (and stripped); --no-strip: do not strip it again.
CARGO_TARGET_DIR="$stage" cargo deb -p opsbro-cli --no-build --no-strip "${fast[@]}" \
    --deb-revision "$revision" --output "$out/opsbro_${version}-${revision}_$(dpkg --print-architecture).deb" >/dev/null
CARGO_TARGET_DIR="$stage" cargo generate-rpm -p crates/cli -s "release = \"$revision\"" \
    -o "$out/opsbro-${version}-${revision}.$(uname -m).rpm" >/dev/null
rm -rf "$stage"
echo "$out/opsbro_${version}-${revision}_$(dpkg --print-architecture).deb"
echo "$out/opsbro-${version}-${revision}.$(uname -m).rpm"
