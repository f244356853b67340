#!/usr/bin/env bash
# `named.sh NAME CMD ARGS...`: sets the hostname (inside the harness's own UTS namespace) and
# runs CMD with its arguments unchanged.
set -euo pipefail
hostname "$1"; shift
exec "$@"
