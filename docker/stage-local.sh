#!/usr/bin/env bash
# Builds the release binaries and stages them, with the shared libraries they need, as the
# build context of docker/Dockerfile.local (target/docker-stage).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${SLUICE_PROFILE:-release}
flag=$([ "$profile" = release ] && echo --release || echo "")
cargo build $flag --locked --bins
stage=target/docker-stage
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib" "$stage/data"
for b in sluice-gateway sluice-risk sluice-notification sluice-logging sluice-loadgen; do
  # Stripped: the image needs no symbols (the host binaries keep them for profiling).
  strip -o "$stage/bin/$b" "target/$profile/$b"
  # Every shared library the binary links, at the path the loader expects.
  ldd "target/$profile/$b" | awk '/=> \// {print $3} /^[ \t]*\/lib/ {print $1}' | while read -r lib; do
    mkdir -p "$stage/lib$(dirname "$lib")"
    cp -L "$lib" "$stage/lib$lib"
  done
done
echo "staged $(ls "$stage/bin" | wc -l) binaries and $(find "$stage/lib" -type f | wc -l) libraries in $stage"
cp docker/Dockerfile.local "$stage/Dockerfile"
