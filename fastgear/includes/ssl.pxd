# Extern declarations of the OpenSSL (libssl, libcrypto 1.1.1 or 3.x) calls the I/O
# loop's TLS layer uses: one server SSL_CTX built at start-up, and per connection a
# non-blocking SSL driven by the same epoll readiness as plain sockets. Only
# iothreads.pyx cimports this, so the other compiled modules need no OpenSSL headers;
# IOConn keeps its SSL as a void pointer for the same reason.


cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct X509:
        pass
    ctypedef struct X509_NAME:
        pass
    ctypedef struct X509_NAME_STACK "STACK_OF(X509_NAME)":
        pass
    ctypedef int (*pem_password_cb)(char *buf, int size, int rwflag, void *userdata)

    enum:
        TLS1_2_VERSION
        SSL_FILETYPE_PEM
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_MODE_RELEASE_BUFFERS
        SSL_OP_NO_RENEGOTIATION
        SSL_OP_NO_COMPRESSION
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_SENT_SHUTDOWN
        SSL_RECEIVED_SHUTDOWN

    const SSL_METHOD *TLS_server_method()
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    void SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes)
    unsigned long SSL_CTX_set_options(SSL_CTX *ctx, unsigned long options)
    void SSL_CTX_set_default_passwd_cb(SSL_CTX *ctx, pem_password_cb cb)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *cafile, const char *capath)
    X509_NAME_STACK *SSL_load_client_CA_file(const char *file)
    void SSL_CTX_set_client_CA_list(SSL_CTX *ctx, X509_NAME_STACK *names)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *callback)
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid_ctx,
                                       unsigned int sid_ctx_len)

    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    int SSL_accept(SSL *ssl)
    int SSL_read(SSL *ssl, void *buf, int num)
    int SSL_write(SSL *ssl, const void *buf, int num)
    int SSL_has_pending(const SSL *ssl)
    int SSL_get_error(const SSL *ssl, int ret)
    int SSL_shutdown(SSL *ssl)
    int SSL_get_shutdown(const SSL *ssl)
    long SSL_get_verify_result(const SSL *ssl)
    # OpenSSL 3 spells it SSL_get1_peer_certificate; the older name is a macro there.
    X509 *SSL_get_peer_certificate(const SSL *ssl)
    const char *SSL_get_version(const SSL *ssl)


cdef extern from "<openssl/x509.h>" nogil:
    enum:
        X509_V_OK
        X509_R_KEY_VALUES_MISMATCH
    void X509_free(X509 *cert)
    X509_NAME *X509_get_subject_name(const X509 *cert)
    int X509_NAME_get_text_by_NID(X509_NAME *name, int nid, char *buf, int len)
    const char *X509_verify_cert_error_string(long n)


cdef extern from "<openssl/objects.h>" nogil:
    enum:
        NID_commonName


cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_last_error()
    void ERR_clear_error()
    const char *ERR_reason_error_string(unsigned long e)
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)
    # A macro in OpenSSL 1.1.1, an inline function in 3.x.
    int ERR_GET_REASON(unsigned long e)
