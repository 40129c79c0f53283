/* The floor: the least any epoll Gearman server must spend on this machine.
 *
 * A measuring instrument for bench/, not part of fastgear. One thread, one epoll loop,
 * level-triggered; per wake-up it recv()s every ready socket until a short read,
 * applies every complete packet, then send()s each connection's replies once - the
 * same syscall pattern as fastgear's loop, with nothing else: one FIFO per function
 * (priorities ignored), a job table by handle number, one sleeping worker woken per
 * job. It speaks just what the load generators use: CAN_DO, PRE_SLEEP, NOOP,
 * SUBMIT_JOB[_HIGH|_LOW][_BG], JOB_CREATED, GRAB_JOB[_UNIQ|_ALL], JOB_ASSIGN[_UNIQ|_ALL],
 * NO_JOB, WORK_COMPLETE/FAIL/EXCEPTION/DATA/WARNING/STATUS, ECHO, OPTION, and the text
 * admin `status` line. Jobs held by a worker that disconnects are dropped, not requeued.
 * It takes gearmand's flags (-p PORT, -L HOST, -P PIDFILE; the others are ignored), so
 * the comparison scripts start it like the two real servers.
 *
 *     gcc -O2 -o floor floor.c && ./floor -p 4730
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    CAN_DO = 1, CANT_DO = 2, RESET_ABILITIES = 3, PRE_SLEEP = 4, NOOP = 6, SUBMIT_JOB = 7,
    JOB_CREATED = 8, GRAB_JOB = 9, NO_JOB = 10, JOB_ASSIGN = 11, WORK_STATUS = 12,
    WORK_COMPLETE = 13, WORK_FAIL = 14, ECHO_REQ = 16, ECHO_RES = 17, SUBMIT_JOB_BG = 18,
    ERROR = 19, SUBMIT_JOB_HIGH = 21, WORK_EXCEPTION = 25, OPTION_REQ = 26, OPTION_RES = 27,
    WORK_DATA = 28, WORK_WARNING = 29, GRAB_JOB_UNIQ = 30, JOB_ASSIGN_UNIQ = 31,
    SUBMIT_JOB_HIGH_BG = 32, SUBMIT_JOB_LOW = 33, SUBMIT_JOB_LOW_BG = 34, GRAB_JOB_ALL = 39,
    JOB_ASSIGN_ALL = 40,
};
#define HDR 12
#define MAXFUNC 4096
#define MAXABIL 4096
#define READ_CHUNK 65536

struct buf { char *d; size_t s, e, cap; };
struct func;
struct job {
    struct job *next, *hnext;      /* FIFO, handle-table chain */
    struct func *f;
    uint64_t id;
    int cfd; uint64_t cgen;        /* foreground client, -1 for background */
    uint32_t ulen, dlen;
    char body[];                   /* unique, then data */
};
struct conn {
    int fd, out_pending, dirty, sleeping, closing;
    uint64_t gen;
    struct buf in, out;
    struct func **abil; int nabil;
    struct conn *dirty_next, *snext;   /* dirty list, a function's sleepers */
};
struct func {
    char name[256]; uint32_t nlen;
    struct job *head, *tail;
    uint64_t queued, running, workers;
    struct conn **sleepers; int nsleep, capsleep;
};

static struct conn **conns; static int nconns_cap;
static struct func *funcs[MAXFUNC]; static int nfuncs;
static struct job **jtab; static uint64_t jmask = (1 << 16) - 1, njobs, next_id = 1;
static struct conn *dirty;
static int epfd;
static uint64_t gen_seq;

static void die(const char *m) { perror(m); exit(1); }

static void reserve(struct buf *b, size_t n)
{
    if (b->cap - b->e >= n) return;
    size_t used = b->e - b->s;
    if (b->s) { memmove(b->d, b->d + b->s, used); b->s = 0; b->e = used; }
    if (b->cap - b->e >= n) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - used < n) cap *= 2;
    if (!(b->d = realloc(b->d, cap))) die("realloc");
    b->cap = cap;
}

static void mark(struct conn *c)
{
    if (!c->dirty) { c->dirty = 1; c->dirty_next = dirty; dirty = c; }
}

/* Append a packet with n fields (NUL-separated) to c's output. */
static void reply(struct conn *c, uint32_t type, int n, const char **f, const size_t *l)
{
    size_t len = 0;
    for (int i = 0; i < n; i++) len += l[i] + (i + 1 < n);
    reserve(&c->out, HDR + len);
    char *p = c->out.d + c->out.e;
    memcpy(p, "\0RES", 4);
    uint32_t t = htonl(type), ln = htonl((uint32_t)len);
    memcpy(p + 4, &t, 4); memcpy(p + 8, &ln, 4);
    p += HDR;
    for (int i = 0; i < n; i++) {
        memcpy(p, f[i], l[i]); p += l[i];
        if (i + 1 < n) *p++ = 0;
    }
    c->out.e += HDR + len;
    mark(c);
}

static size_t fmt_handle(char *out, uint64_t id)
{
    char tmp[24]; int n = 0;
    memcpy(out, "H:floor:", 8);
    do { tmp[n++] = (char)('0' + id % 10); id /= 10; } while (id);
    for (int i = 0; i < n; i++) out[8 + i] = tmp[n - 1 - i];
    return 8 + (size_t)n;
}

static uint64_t parse_handle(const char *h, size_t n)
{
    uint64_t v = 0;
    if (n <= 8 || memcmp(h, "H:floor:", 8)) return 0;
    for (size_t i = 8; i < n; i++) {
        if (h[i] < '0' || h[i] > '9') return 0;
        v = v * 10 + (uint64_t)(h[i] - '0');
    }
    return v;
}

static struct func *func_get(const char *name, size_t n, int create)
{
    for (int i = 0; i < nfuncs; i++)
        if (funcs[i]->nlen == n && !memcmp(funcs[i]->name, name, n)) return funcs[i];
    if (!create || nfuncs == MAXFUNC || n >= sizeof funcs[0]->name) return NULL;
    struct func *f = calloc(1, sizeof *f);
    if (!f) die("calloc");
    memcpy(f->name, name, n); f->nlen = (uint32_t)n;
    return funcs[nfuncs++] = f;
}

static void jtab_grow(void)
{
    uint64_t nm = jmask * 2 + 1;
    struct job **t = calloc(nm + 1, sizeof *t);
    if (!t) die("calloc");
    for (uint64_t i = 0; i <= jmask; i++)
        for (struct job *j = jtab[i], *nx; j; j = nx) { nx = j->hnext; j->hnext = t[j->id & nm]; t[j->id & nm] = j; }
    free(jtab); jtab = t; jmask = nm;
}

static void wake_one(struct func *f)
{
    while (f->nsleep) {
        struct conn *w = f->sleepers[--f->nsleep];
        if (w->fd >= 0 && w->sleeping) {
            w->sleeping = 0;
            reply(w, NOOP, 0, NULL, NULL);
            return;
        }
    }
}

static void submit(struct conn *c, uint32_t type, const char **f, const size_t *l)
{
    int bg = type == SUBMIT_JOB_BG || type == SUBMIT_JOB_HIGH_BG || type == SUBMIT_JOB_LOW_BG;
    struct func *fn = func_get(f[0], l[0], 1);
    if (!fn) { const char *e[2] = {"ERR", "too many functions"}; size_t el[2] = {3, 18}; reply(c, ERROR, 2, e, el); return; }
    struct job *j = malloc(sizeof *j + l[1] + l[2]);
    if (!j) die("malloc");
    j->next = NULL; j->f = fn; j->id = next_id++;
    j->cfd = bg ? -1 : c->fd; j->cgen = c->gen;
    j->ulen = (uint32_t)l[1]; j->dlen = (uint32_t)l[2];
    memcpy(j->body, f[1], l[1]); memcpy(j->body + l[1], f[2], l[2]);
    if (njobs > jmask) jtab_grow();
    j->hnext = jtab[j->id & jmask]; jtab[j->id & jmask] = j; njobs++;
    if (fn->tail) fn->tail->next = j; else fn->head = j;
    fn->tail = j; fn->queued++;
    char h[32]; size_t hl = fmt_handle(h, j->id);
    const char *hf[1] = {h};
    reply(c, JOB_CREATED, 1, hf, &hl);
    wake_one(fn);
}

static void grab(struct conn *c, uint32_t type)
{
    for (int i = 0; i < c->nabil; i++) {
        struct func *fn = c->abil[i];
        struct job *j = fn->head;
        if (!j) continue;
        if (!(fn->head = j->next)) fn->tail = NULL;
        fn->queued--; fn->running++;
        char h[32]; size_t hl = fmt_handle(h, j->id);
        const char *f[5] = {h, fn->name, j->body, "", j->body + j->ulen};
        size_t l[5] = {hl, fn->nlen, j->ulen, 0, j->dlen};
        if (type == GRAB_JOB_ALL) reply(c, JOB_ASSIGN_ALL, 5, f, l);
        else if (type == GRAB_JOB_UNIQ) reply(c, JOB_ASSIGN_UNIQ, 4, (const char *[]){h, fn->name, j->body, j->body + j->ulen}, (size_t[]){hl, fn->nlen, j->ulen, j->dlen});
        else reply(c, JOB_ASSIGN, 3, (const char *[]){h, fn->name, j->body + j->ulen}, (size_t[]){hl, fn->nlen, j->dlen});
        return;
    }
    reply(c, NO_JOB, 0, NULL, NULL);
}

static void work(uint32_t type, const char *d, size_t len)
{
    const char *z = memchr(d, 0, len);
    size_t hl = z ? (size_t)(z - d) : len;
    uint64_t id = parse_handle(d, hl);
    struct job **pp = &jtab[id & jmask], *j;
    while ((j = *pp) && j->id != id) pp = &j->hnext;
    if (!j) return;
    int final = type == WORK_COMPLETE || type == WORK_FAIL || type == WORK_EXCEPTION;
    if (j->cfd >= 0 && j->cfd < nconns_cap && conns[j->cfd] && conns[j->cfd]->gen == j->cgen) {
        struct conn *cl = conns[j->cfd];
        reserve(&cl->out, HDR + len);
        char *p = cl->out.d + cl->out.e;
        uint32_t t = htonl(type), ln = htonl((uint32_t)len);
        memcpy(p, "\0RES", 4); memcpy(p + 4, &t, 4); memcpy(p + 8, &ln, 4);
        memcpy(p + HDR, d, len);
        cl->out.e += HDR + len;
        mark(cl);
    }
    if (!final) return;
    *pp = j->hnext; njobs--;
    j->f->running--;
    free(j);
}

static void admin_line(struct conn *c, const char *line, size_t n)
{
    char tmp[512];
    if (n >= 6 && !memcmp(line, "status", 6)) {
        for (int i = 0; i < nfuncs; i++) {
            struct func *f = funcs[i];
            int k = snprintf(tmp, sizeof tmp, "%.*s\t%llu\t%llu\t%llu\n", (int)f->nlen, f->name,
                             (unsigned long long)(f->queued + f->running),
                             (unsigned long long)f->running, (unsigned long long)f->workers);
            reserve(&c->out, (size_t)k);
            memcpy(c->out.d + c->out.e, tmp, (size_t)k); c->out.e += (size_t)k;
        }
    }
    reserve(&c->out, 2);
    memcpy(c->out.d + c->out.e, ".\n", 2); c->out.e += 2;
    mark(c);
}

static void packet(struct conn *c, uint32_t type, const char *d, size_t len)
{
    const char *f[8]; size_t l[8]; int nf = 0;
    int want = type == SUBMIT_JOB || type == SUBMIT_JOB_BG || type == SUBMIT_JOB_HIGH ||
               type == SUBMIT_JOB_HIGH_BG || type == SUBMIT_JOB_LOW || type == SUBMIT_JOB_LOW_BG ? 3 : 1;
    const char *p = d, *end = d + len;
    while (nf < want - 1) {                 /* the last field takes the rest */
        const char *z = memchr(p, 0, (size_t)(end - p));
        if (!z) break;
        f[nf] = p; l[nf++] = (size_t)(z - p); p = z + 1;
    }
    f[nf] = p; l[nf++] = (size_t)(end - p);
    switch (type) {
    case SUBMIT_JOB: case SUBMIT_JOB_BG: case SUBMIT_JOB_HIGH: case SUBMIT_JOB_HIGH_BG:
    case SUBMIT_JOB_LOW: case SUBMIT_JOB_LOW_BG:
        if (nf == 3) submit(c, type, f, l);
        else c->closing = 1;
        break;
    case CAN_DO: {
        struct func *fn = func_get(d, len, 1);
        if (fn && c->nabil < MAXABIL) {
            if (!(c->nabil & (c->nabil - 1)) || !c->abil)
                if (!(c->abil = realloc(c->abil, sizeof *c->abil * (size_t)(c->nabil ? c->nabil * 2 : 1)))) die("realloc");
            c->abil[c->nabil++] = fn; fn->workers++;
        }
        break;
    }
    case PRE_SLEEP: {
        int queued = 0;
        for (int i = 0; i < c->nabil; i++) if (c->abil[i]->head) queued = 1;
        if (queued) { reply(c, NOOP, 0, NULL, NULL); break; }
        c->sleeping = 1;
        for (int i = 0; i < c->nabil; i++) {
            struct func *fn = c->abil[i];
            if (fn->nsleep == fn->capsleep) {
                fn->capsleep = fn->capsleep ? fn->capsleep * 2 : 16;
                if (!(fn->sleepers = realloc(fn->sleepers, sizeof *fn->sleepers * (size_t)fn->capsleep))) die("realloc");
            }
            fn->sleepers[fn->nsleep++] = c;
        }
        break;
    }
    case GRAB_JOB: case GRAB_JOB_UNIQ: case GRAB_JOB_ALL:
        c->sleeping = 0;
        grab(c, type);
        break;
    case WORK_COMPLETE: case WORK_FAIL: case WORK_EXCEPTION: case WORK_DATA:
    case WORK_WARNING: case WORK_STATUS:
        work(type, d, len);
        break;
    case ECHO_REQ: reply(c, ECHO_RES, 1, &d, &len); break;
    case OPTION_REQ: reply(c, OPTION_RES, 1, &d, &len); break;
    default: break;                         /* SET_CLIENT_ID, CANT_DO, ...: ignored */
    }
}

static void parse(struct conn *c)
{
    struct buf *b = &c->in;
    while (b->e > b->s && !c->closing) {
        char *p = b->d + b->s;
        size_t avail = b->e - b->s;
        if (p[0] != 0) {                    /* text admin line */
            char *nl = memchr(p, '\n', avail);
            if (!nl) return;
            admin_line(c, p, (size_t)(nl - p));
            b->s += (size_t)(nl - p) + 1;
            continue;
        }
        if (avail < HDR) return;
        uint32_t type, len;
        memcpy(&type, p + 4, 4); memcpy(&len, p + 8, 4);
        type = ntohl(type); len = ntohl(len);
        if (len > (64u << 20)) { c->closing = 1; return; }
        if (avail < HDR + (size_t)len) return;
        packet(c, type, p + HDR, len);
        b->s += HDR + len;
    }
    if (b->s == b->e) b->s = b->e = 0;
}

static void conn_close(struct conn *c)
{
    for (int i = 0; i < c->nabil; i++) c->abil[i]->workers--;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    c->fd = -1;
    c->sleeping = 0;
    /* Freed after the batch: it may still be on the dirty list or a sleeper list. */
    c->closing = 2;
}

static void set_out(struct conn *c, int on)
{
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (c->out_pending != on) { c->out_pending = on; epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev); }
}

static void flush(struct conn *c)
{
    while (c->out.e > c->out.s) {
        ssize_t n = send(c->fd, c->out.d + c->out.s, c->out.e - c->out.s, MSG_NOSIGNAL);
        if (n > 0) { c->out.s += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) { set_out(c, 1); return; }
        c->closing = 1; break;
    }
    c->out.s = c->out.e = 0;
    if (c->out_pending) set_out(c, 0);
}

static volatile sig_atomic_t quit;
static void on_term(int sig) { (void)sig; quit = 1; }

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *pidfile = NULL;
    int port = 4730;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-p") && v) { port = atoi(v); i++; }
        else if (!strcmp(a, "-L") && v) { host = v; i++; }
        else if (!strcmp(a, "-P") && v) { pidfile = v; i++; }
        else if ((!strcmp(a, "-t") || !strcmp(a, "--log-file")) && v) i++;   /* ignored */
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    if (pidfile) { FILE *pf = fopen(pidfile, "w"); if (pf) { fprintf(pf, "%d\n", getpid()); fclose(pf); } }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "floor: -L takes an IPv4 address\n"); return 2; }
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 1024) < 0) die("bind/listen");
    if ((epfd = epoll_create1(0)) < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, ls, &ev);
    if (!(jtab = calloc(jmask + 1, sizeof *jtab))) die("calloc");
    struct epoll_event evs[256];
    struct conn *dead = NULL;
    while (!quit) {
        int n = epoll_wait(epfd, evs, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    if (fd >= nconns_cap) {
                        int cap = fd * 2 + 64;
                        if (!(conns = realloc(conns, sizeof *conns * (size_t)cap))) die("realloc");
                        memset(conns + nconns_cap, 0, sizeof *conns * (size_t)(cap - nconns_cap));
                        nconns_cap = cap;
                    }
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) die("calloc");
                    nc->fd = fd; nc->gen = ++gen_seq;
                    conns[fd] = nc;
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ce);
                }
                continue;
            }
            if (c->fd < 0) continue;
            if (evs[i].events & EPOLLOUT) flush(c);
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    reserve(&c->in, READ_CHUNK);
                    size_t space = c->in.cap - c->in.e;
                    ssize_t r = recv(c->fd, c->in.d + c->in.e, space, 0);
                    if (r > 0) { c->in.e += (size_t)r; if ((size_t)r < space) break; continue; }
                    if (r < 0 && errno == EINTR) continue;
                    if (r < 0 && errno == EAGAIN) break;
                    c->closing = 1; break;
                }
                parse(c);
            }
            if (c->closing == 1 && c->out.e == c->out.s) { conn_close(c); c->dirty_next = dead; dead = c; }
        }
        while (dirty) {
            struct conn *c = dirty;
            dirty = c->dirty_next; c->dirty = 0;
            if (c->fd >= 0) flush(c);
            if (c->closing == 1) { conn_close(c); c->dirty_next = dead; dead = c; }
        }
        /* Closed connections may still sit on sleeper lists: drop them there first. */
        if (dead) {
            for (int k = 0; k < nfuncs; k++) {
                struct func *f = funcs[k]; int w = 0;
                for (int s = 0; s < f->nsleep; s++) if (f->sleepers[s]->fd >= 0) f->sleepers[w++] = f->sleepers[s];
                f->nsleep = w;
            }
            while (dead) { struct conn *c = dead; dead = c->dirty_next; free(c->in.d); free(c->out.d); free(c->abil); free(c); }
        }
    }
    if (pidfile) unlink(pidfile);
    return 0;
}
