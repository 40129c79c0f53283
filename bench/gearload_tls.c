/*
 * gearload_tls.c - TLS for the neutral load generator, without copying it.
 *
 * bench/compare_tls.py compiles ../shared/tools/gearload.c with this file force-included
 * in front (gcc -include bench/gearload_tls.c ... -lssl -lcrypto), so the plain and the
 * TLS figures come from the same generator code: the macros at the end send gearload's
 * connect/send/recv/close on sockets through OpenSSL. connect() finishes a blocking
 * TLS handshake before gearload makes the socket non-blocking; afterwards
 * WANT_READ/WANT_WRITE read as EAGAIN, which gearload's level-triggered epoll loop
 * already retries. The server certificate is not checked: this is a load tool on
 * loopback, not a client anyone should copy. Bench-only; not part of fastgear.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_CTX *tls_ctx;
static SSL **tls_by_fd;      /* sized once for the descriptor limit: no resize races */
static long tls_nfd;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void tls_init(void)
{
    struct rlimit rl;
    tls_nfd = 1 << 16;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY
            && (long)rl.rlim_max > tls_nfd)
        tls_nfd = rl.rlim_max < (1 << 22) ? (long)rl.rlim_max : (1 << 22);
    tls_by_fd = calloc((size_t)tls_nfd, sizeof(SSL *));
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_by_fd || !tls_ctx) {
        fprintf(stderr, "gearload-tls: cannot set up OpenSSL\n");
        exit(2);
    }
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    /* gearload retries a send from a buffer that may have grown and moved. */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                     | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    /* SSL_write uses write(): a closed peer must give EPIPE, not kill the tool. */
    signal(SIGPIPE, SIG_IGN);
}

static SSL *tls_of(int fd)
{
    return fd >= 0 && fd < tls_nfd && tls_by_fd ? tls_by_fd[fd] : NULL;
}

static int tls_connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    int r = connect(fd, addr, len);
    if (r < 0)
        return r;
    pthread_once(&tls_once, tls_init);
    if (fd >= tls_nfd) {
        errno = EMFILE;
        return -1;
    }
    SSL *ssl = SSL_new(tls_ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_connect(ssl) != 1) {
        unsigned long e = ERR_get_error();
        fprintf(stderr, "gearload-tls: handshake failed: %s\n",
                e ? ERR_reason_error_string(e) : "connection closed");
        ERR_clear_error();
        if (ssl)
            SSL_free(ssl);
        errno = ECONNREFUSED;
        return -1;
    }
    tls_by_fd[fd] = ssl;
    return 0;
}

static ssize_t tls_result(SSL *ssl, int r)
{
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    ERR_clear_error();
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (e != SSL_ERROR_SYSCALL || errno == 0)
        errno = ECONNRESET;
    return -1;
}

static ssize_t tls_send(int fd, const void *buf, size_t n, int flags)
{
    SSL *ssl = tls_of(fd);
    if (!ssl)
        return send(fd, buf, n, flags);
    int r = SSL_write(ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
    return r > 0 ? r : tls_result(ssl, r);
}

static ssize_t tls_recv(int fd, void *buf, size_t n, int flags)
{
    SSL *ssl = tls_of(fd);
    if (!ssl)
        return recv(fd, buf, n, flags);
    int r = SSL_read(ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
    if (r <= 0)
        return tls_result(ssl, r);
    /* Decrypted bytes left inside OpenSSL would not wake epoll: take them now. */
    size_t got = (size_t)r;
    while (got < n && SSL_pending(ssl) > 0) {
        r = SSL_read(ssl, (char *)buf + got, n - got > INT_MAX ? INT_MAX : (int)(n - got));
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    ERR_clear_error();
    return (ssize_t)got;
}

static int tls_close(int fd)
{
    SSL *ssl = tls_of(fd);
    if (ssl) {
        SSL_free(ssl);           /* no close_notify: gearload closes at exit only */
        tls_by_fd[fd] = NULL;
    }
    return close(fd);
}

#define connect tls_connect
#define send tls_send
#define recv tls_recv
#define close tls_close
