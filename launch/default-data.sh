#!/usr/bin/env bash
# Writes the default training text for `make run` to $1: the English prose of Debian's
# `fortunes` package (installed by `make setup`), concatenated in a fixed order so every
# machine gets the same corpus. Nothing third-party is stored in the repository.
set -euo pipefail
out="${1:?usage: launch/default-data.sh OUT.txt}"
src=/usr/share/games/fortunes
[ -d "$src" ] || { echo "error: $src missing (default data): run 'make setup' (installs the fortunes package)" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
: > "$tmp"
for f in $(find "$src" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | LC_ALL=C sort); do
  # Drop the '%' separators between fortunes; keep the text.
  grep -v '^%$' "$f" >> "$tmp" || true
done
mv "$tmp" "$out"
echo "default data: $(wc -c < "$out") bytes from $src -> $out"
