// Stop requests from signals. SIGTERM, SIGINT and SIGUSR1 are blocked at the top of `tessera train`'s
// main, before any library starts threads (so Open MPI's threads inherit the block: a handler running on one
// of them corrupted the heap on these AVX-512 machines), and the training loop asks between
// steps whether one is pending.
#include "csignals.h"
#include <pthread.h>
#include <signal.h>
#include <time.h>

static volatile sig_atomic_t stop_signal = 0;

// Some runtime threads (the OpenMP worker, here) start with an empty signal mask whatever the
// creator blocked; a signal that lands on one of them is recorded by this handler instead of
// taking the default action. It only stores the number.
static void on_stop(int sig) { stop_signal = sig; }

void tessera_install_stop_handler(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

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
