// Stop requests from signals, without signal handlers: SIGTERM, SIGINT and SIGUSR1 are
// blocked in the main thread before any library starts threads (so every thread inherits the
// block), and the training loop asks between steps whether one is pending. No signal frame is
// ever pushed onto a library thread's stack; delivering one to Open MPI's threads through a
// handler corrupted the heap on these AVX-512 machines.
#include "ckernels.h"
#include <pthread.h>
#include <signal.h>
#include <time.h>

static int stop_signal = 0;

static void stop_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGUSR1);
}

void tessera_block_stop_signals(void) {
    sigset_t set;
    stop_set(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int tessera_stop_signal(void) {
    if (stop_signal) return stop_signal;
    sigset_t set, pending;
    stop_set(&set);
    if (sigpending(&pending) != 0) return 0;
    if (!sigismember(&pending, SIGTERM) && !sigismember(&pending, SIGINT) && !sigismember(&pending, SIGUSR1)) return 0;
    struct timespec zero = {0, 0};
    int sig = sigtimedwait(&set, NULL, &zero);   // consume it
    if (sig > 0) stop_signal = sig;
    return stop_signal;
}
