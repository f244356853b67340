#!/usr/bin/env bash
# Run a training job and bring it back when it fails:
#   launch/resilient.sh [-n RANKS] [--hostfile FILE] [--max-restarts K] [--backoff SECONDS]
#                       [--elastic] [--bad-hosts FILE] [--min-ranks M] [--launcher CMD] -- <tessera train args>
#
# Each attempt runs launch/local.sh (or launch/multinode.sh with --hostfile); when the run
# directory already holds a checkpoint, the attempt adds `--resume latest` (a restart
# replaces any --resume given, which a branch from another run's checkpoint has). A failed attempt
# is retried after BACKOFF·2^(attempt-1) seconds, up to K restarts. It never retries a
# configuration error (status 2 or 64): restarting cannot fix those. A stop signal sent to
# this script is passed on; the job checkpoints and exits 75, and so does this script.
#
# --elastic: a rank or host that fails is dropped and the job goes on with the rest, from the
# last checkpoint, resharded to the new world size; the global batch is unchanged (more
# accumulation per rank), so the run means the same. With a hostfile, hosts named in
# --bad-hosts, or that fail twice, are removed from it; without one, each failure that killed
# a rank costs one rank. Never below --min-ranks (default 1).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$here/launch/lib.sh"
ranks=1 hostfile="" max_restarts=3 backoff=2 elastic=0 bad_hosts="" min_ranks=1 launcher=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) ranks="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    --backoff) backoff="$2"; shift 2 ;;
    --elastic) elastic=1; shift ;;
    --bad-hosts) bad_hosts="$2"; shift 2 ;;
    --min-ranks) min_ranks="$2"; shift 2 ;;
    --launcher) launcher="$2"; shift 2 ;;
    --) shift; break ;;
    *) die_usage "unknown option $1" "launch/resilient.sh" "put tessera's own arguments after --" ;;
  esac
done
[ $# -gt 0 ] || die_usage "no tessera arguments" "launch/resilient.sh" "e.g. launch/resilient.sh -n 2 -- train --data DIR --out RUN"
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die_usage "-n '$ranks' is not a positive count" "launch/resilient.sh" "e.g. -n 2"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die_usage "--max-restarts '$max_restarts'" "launch/resilient.sh" "pass a count >= 0"

# The run directory (for the checkpoint check and the attempt logs).
out="runs/default"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in --out) out="${args[$((i + 1))]}" ;; --out=*) out="${args[$i]#--out=}" ;; esac
done
mkdir -p "$out"
log() { echo "resilient: $*" | tee -a "$out/launch.log" >&2; }

work_hosts=""
if [ -n "$hostfile" ]; then
  work_hosts="$out/.hostfile.active"
  cp "$hostfile" "$work_hosts"
fi
declare -A host_failures=()

drop_host() {  # removes host $1 from the active hostfile and its slots from the rank count
  local h="$1" slots
  slots=$(awk -v h="$h" '$1 == h { for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { sub("slots=", "", $i); print $i } }' "$work_hosts")
  grep -v -E "^$h([[:space:]]|$)" "$work_hosts" > "$work_hosts.new" && mv "$work_hosts.new" "$work_hosts"
  ranks=$((ranks - ${slots:-1}))
  log "dropping host $h (${slots:-1} slot(s)); continuing on $ranks rank(s)"
}

stop=0
trap 'stop=1; [ -n "${child:-}" ] && kill -TERM "$child" 2>/dev/null' TERM INT
attempt=0
while true; do
  extra=() run_args=("${args[@]}")
  if [ -f "$out/checkpoints/latest" ]; then
    if [ "$attempt" -gt 0 ]; then
      # A restart continues this run's own latest checkpoint, also when the first attempt
      # branched from another run's (--resume OTHER): its progress is here now.
      run_args=()
      for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[$i]}" in --resume) i=$((i + 1)) ;; --resume=*) ;; *) run_args+=("${args[$i]}") ;; esac
      done
      extra=(--resume latest)
    elif [[ " ${args[*]} " != *" --resume "* && " ${args[*]} " != *" --resume="* ]]; then
      extra=(--resume latest)
    fi
  fi
  if [ -n "$bad_hosts" ] && [ -n "$work_hosts" ] && [ -f "$bad_hosts" ]; then
    while read -r h; do [ -n "$h" ] && grep -q -E "^$h([[:space:]]|$)" "$work_hosts" && drop_host "$h"; done < "$bad_hosts"
  fi
  if [ "$ranks" -lt "$min_ranks" ]; then log "only $ranks rank(s) left, below --min-ranks $min_ranks: giving up"; exit 1; fi
  attempt_log="$out/launch-attempt-$attempt.log"
  if [ -n "$launcher" ]; then cmd=($launcher -n "$ranks" --)
  elif [ -n "$work_hosts" ]; then cmd=("$here/launch/multinode.sh" --hostfile "$work_hosts" -n "$ranks" --)
  else cmd=("$here/launch/local.sh" -n "$ranks" --); fi
  log "attempt $attempt: ${cmd[*]} ${run_args[*]} ${extra[*]}"
  "${cmd[@]}" "${run_args[@]}" "${extra[@]}" > >(tee "$attempt_log") 2> >(tee -a "$attempt_log" >&2) &
  child=$!
  status=0
  while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
  wait "$child" 2>/dev/null; s=$?; [ "$s" != 127 ] && status=$s
  case "$status" in
    0) log "attempt $attempt finished"; exit 0 ;;
    2|64) log "attempt $attempt failed with a configuration error (status $status): not restarting"; exit "$status" ;;
    75) if [ "$stop" = 1 ]; then log "stopped by a signal after a checkpoint (status 75)"; exit 75; fi
        log "attempt $attempt was pre-empted (status 75): resuming" ;;
    *) log "attempt $attempt failed with status $status" ;;
  esac
  [ "$stop" = 1 ] && exit "$status"
  if [ "$attempt" -ge "$max_restarts" ]; then log "giving up after $max_restarts restart(s)"; exit "$status"; fi
  if [ "$elastic" = 1 ] && [ "$status" != 75 ]; then
    # Open MPI names the failed process: "process rank K ... on node HOST exited on signal".
    failed_host=$(grep -oE "on node [^ ]+ exited" "$attempt_log" | head -1 | awk '{print $3}')
    if [ -n "$work_hosts" ] && [ -n "$failed_host" ]; then
      host_failures[$failed_host]=$(( ${host_failures[$failed_host]:-0} + 1 ))
      if [ "${host_failures[$failed_host]}" -ge 2 ]; then drop_host "$failed_host"; fi
    elif [ -z "$work_hosts" ] && grep -qE "exited on signal|rank [0-9]+ .*(died|exited)" "$attempt_log"; then
      if [ "$ranks" -gt "$min_ranks" ]; then ranks=$((ranks - 1)); log "a rank was lost: continuing on $ranks rank(s)"; fi
    fi
  fi
  attempt=$((attempt + 1))
  delay=$((backoff * (1 << (attempt - 1))))
  log "restarting in ${delay}s (attempt $attempt of at most $max_restarts restarts)"
  sleep "$delay" & wait $! || true
done
