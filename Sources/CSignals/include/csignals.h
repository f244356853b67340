// Stop signals for graceful pre-emption, in C because a handler must be async-signal-safe
// (a Swift closure handler corrupted the heap under MPI). Used only by the Training module.
#ifndef TESSERA_CSIGNALS_H
#define TESSERA_CSIGNALS_H

#ifdef __cplusplus
extern "C" {
#endif

/// Blocks SIGTERM/SIGINT/SIGUSR1 in the calling thread and in threads it starts afterwards.
void tessera_block_stop_signals(void);
/// Records stop signals that reach threads which do not block them.
void tessera_install_stop_handler(void);
/// The stop signal that arrived (consumed from the pending set), or 0.
int tessera_stop_signal(void);

#ifdef __cplusplus
}
#endif
#endif
