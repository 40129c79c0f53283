/* The engine's allocator calls. Release builds get plain malloc/calloc/realloc/free
 * and never evaluate the engine argument. The debug build (FASTGEAR_DEBUG=1) counts the
 * engine's live allocations in e->live_allocs, so that a test can check after
 * engine_free that everything the engine allocated was given back. Memory the engine
 * hands to its caller must be released through the engine for the count to hold. */
#ifndef FASTGEAR_FGALLOC_H
#define FASTGEAR_FGALLOC_H

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef FASTGEAR_DEBUG
#define FASTGEAR_DEBUG 0
#endif

#if FASTGEAR_DEBUG

static inline void *fg_counted_(int64_t *live, void *p)
{
    if (p != NULL)
        __atomic_add_fetch(live, 1, __ATOMIC_RELAXED);
    return p;
}

static inline void *fg_counted_realloc_(int64_t *live, void *old, size_t n)
{
    void *p = realloc(old, n);
    if (old == NULL && p != NULL)
        __atomic_add_fetch(live, 1, __ATOMIC_RELAXED);
    return p;
}

static inline void fg_counted_free_(int64_t *live, void *p)
{
    if (p != NULL) {
        /* Atomic: the store thread gives back its array of row ids outside the
         * engine lock. */
        int64_t left = __atomic_sub_fetch(live, 1, __ATOMIC_RELAXED);
        assert(left >= 0);
        (void)left;
        free(p);
    }
}

#define FG_MALLOC(e, n) fg_counted_(&(e)->live_allocs, malloc(n))
#define FG_CALLOC(e, k, n) fg_counted_(&(e)->live_allocs, calloc((k), (n)))
#define FG_REALLOC(e, p, n) fg_counted_realloc_(&(e)->live_allocs, (p), (n))
#define FG_FREE(e, p) fg_counted_free_(&(e)->live_allocs, (p))

#else

#define FG_MALLOC(e, n) malloc(n)
#define FG_CALLOC(e, k, n) calloc((k), (n))
#define FG_REALLOC(e, p, n) realloc((p), (n))
#define FG_FREE(e, p) free(p)

#endif

#endif
