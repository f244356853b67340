# Shared by the launch scripts (sourced, not run).

# Root in containers: Open MPI refuses to run as root unless told.
allow_root() {
  if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
}

# Runs "$@" (an mpirun command) and turns SIGTERM/SIGINT/SIGUSR1 into SIGUSR1 for it, which
# mpirun forwards to the ranks without tearing the job down: they finish the step, commit a
# checkpoint and exit 75, and mpirun reports that status. Returns the command's status.
#
# A rank whose watchdog fires touches $TESSERA_ABORT_FILE before MPI_Abort. If mpirun is still
# alive 5 s later (it can hang trying to reach a host whose link is gone), it is killed, so a
# lost host ends the job within --comm-timeout plus a few seconds.
run_forwarding_stop() {
  export TESSERA_ABORT_FILE="${TMPDIR:-/tmp}/tessera-abort.$$.$RANDOM"
  rm -f "$TESSERA_ABORT_FILE"
  "$@" &
  local child=$! status=0 grace=0
  trap 'kill -USR1 "$child" 2>/dev/null' TERM INT USR1
  while kill -0 "$child" 2>/dev/null; do
    sleep 0.5 || true
    if [ -e "$TESSERA_ABORT_FILE" ]; then
      grace=$((grace + 1))
      if [ "$grace" -ge 10 ]; then
        echo "launch: a rank aborted and mpirun did not exit; killing the job" >&2
        pkill -9 -P "$child" 2>/dev/null || true
        kill -9 "$child" 2>/dev/null || true
      fi
    fi
  done
  wait "$child" || status=$?
  trap - TERM INT USR1
  if [ -e "$TESSERA_ABORT_FILE" ] && [ "$status" = 0 ]; then status=1; fi
  rm -f "$TESSERA_ABORT_FILE"
  return "$status"
}

die_usage() { echo "error: $1 ($2): $3" >&2; exit 64; }
