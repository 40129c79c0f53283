/* Intrusive doubly linked lists as macros. The engine's structs sit on many lists at
 * once and each list names its link fields (q_prev/q_next, s_prev/s_next, r_prev[p]/
 * r_next[p], ...), so one implementation takes the field names as arguments: the
 * compiler inlines it at every use, with no function pointers or offsetof arithmetic
 * on the hot path. engine.pxd binds these to each list with typed names.
 *
 * Two shapes: DL_* lists keep only a head pointer, DLQ_* lists a head and a tail.
 * `head` and `tail` are the addresses of those pointers, `n` the node, `prev` and
 * `next` its link fields. Arguments are evaluated more than once: pass plain lvalues.
 * Removal clears the node's links. With assert() on (the FASTGEAR_DEBUG=1 build)
 * removal first checks that the neighbours and ends agree with the node's links, so a
 * node removed twice or from the wrong list stops the process at once. */
#ifndef FASTGEAR_DLIST_H
#define FASTGEAR_DLIST_H

#include <assert.h>
#include <stddef.h>

#define DL_ASSERT_LINKED_(head, n, prev, next) \
    assert((n)->prev != NULL ? (n)->prev->next == (n) : *(head) == (n)); \
    assert((n)->next == NULL || (n)->next->prev == (n))

/* Insert n before the first node of a head-only list. */
#define DL_PUSH(head, n, prev, next) do { \
    (n)->prev = NULL; \
    (n)->next = *(head); \
    if (*(head) != NULL) \
        (*(head))->prev = (n); \
    *(head) = (n); \
} while (0)

/* Take n out of a head-only list. */
#define DL_REMOVE(head, n, prev, next) do { \
    DL_ASSERT_LINKED_(head, n, prev, next); \
    if ((n)->prev != NULL) \
        (n)->prev->next = (n)->next; \
    else \
        *(head) = (n)->next; \
    if ((n)->next != NULL) \
        (n)->next->prev = (n)->prev; \
    (n)->prev = NULL; \
    (n)->next = NULL; \
} while (0)

/* Append n after the last node of a head-and-tail list. */
#define DLQ_PUSH_TAIL(head, tail, n, prev, next) do { \
    (n)->next = NULL; \
    (n)->prev = *(tail); \
    if (*(tail) != NULL) \
        (*(tail))->next = (n); \
    else \
        *(head) = (n); \
    *(tail) = (n); \
} while (0)

/* Insert n before the first node of a head-and-tail list. */
#define DLQ_PUSH_HEAD(head, tail, n, prev, next) do { \
    (n)->prev = NULL; \
    (n)->next = *(head); \
    if (*(head) != NULL) \
        (*(head))->prev = (n); \
    else \
        *(tail) = (n); \
    *(head) = (n); \
} while (0)

/* Take n out of a head-and-tail list. */
#define DLQ_REMOVE(head, tail, n, prev, next) do { \
    DL_ASSERT_LINKED_(head, n, prev, next); \
    assert((n)->next != NULL || *(tail) == (n)); \
    if ((n)->prev != NULL) \
        (n)->prev->next = (n)->next; \
    else \
        *(head) = (n)->next; \
    if ((n)->next != NULL) \
        (n)->next->prev = (n)->prev; \
    else \
        *(tail) = (n)->prev; \
    (n)->prev = NULL; \
    (n)->next = NULL; \
} while (0)

#endif
