// Independent tasks spread over the OpenMP team that oneDNN itself uses.
//
// Inside the team OpenMP does not nest, so each task's oneDNN calls run single-threaded on
// the task's thread: many small GEMMs (one attention head each) then cost no fork/join per
// call, and the element-wise work between them runs in parallel too.
#include "ckernels.h"
#include <stdatomic.h>

// libgomp's entry point for a parallel region (what `#pragma omp parallel` lowers to);
// declared here so the target needs neither omp.h nor -fopenmp.
extern void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
extern int omp_get_thread_num(void);
extern int omp_in_parallel(void);

typedef struct {
    int64_t count;
    atomic_llong next;
    tessera_task_fn fn;
    void *context;
} task_queue;

static void run_queue(void *data) {
    task_queue *q = data;
    int64_t worker = omp_get_thread_num();
    for (;;) {
        int64_t i = atomic_fetch_add(&q->next, 1);
        if (i >= q->count) break;
        q->fn(q->context, i, worker);
    }
}

void tessera_parallel_tasks(int64_t count, int64_t workers, tessera_task_fn fn, void *context) {
    task_queue q = {.count = count, .fn = fn, .context = context};
    atomic_init(&q.next, 0);
    if (workers <= 1 || count <= 1) { run_queue(&q); return; }
    GOMP_parallel(run_queue, &q, (unsigned)(workers < count ? workers : count), 0);
}

int tessera_in_parallel(void) { return omp_in_parallel(); }

// MARK: A team working in step

extern void GOMP_barrier(void);
extern int omp_get_num_threads(void);

typedef struct {
    tessera_team_fn fn;
    void *context;
} team_job;

static void run_member(void *data) {
    team_job *job = data;
    job->fn(job->context, omp_get_thread_num(), omp_get_num_threads());
}

void tessera_parallel_team(int64_t workers, tessera_team_fn fn, void *context) {
    team_job job = {.fn = fn, .context = context};
    // Inside a region OpenMP does not nest: the team is then this thread alone.
    GOMP_parallel(run_member, &job, (unsigned)(workers > 1 ? workers : 1), 0);
}

void tessera_team_barrier(void) { GOMP_barrier(); }
