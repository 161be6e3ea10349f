#define _GNU_SOURCE
#include "tollgate_tls.h"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

static void set_err(char *err, size_t len, const char *what) {
    unsigned long e = ERR_get_error();
    if (e) snprintf(err, len, "%s: %s", what, ERR_reason_error_string(e));
    else snprintf(err, len, "%s: %s", what, errno ? strerror(errno) : "failed");
    ERR_clear_error();
}

EVP_PKEY *tg_generate_p256_key(void) { return EVP_EC_gen("P-256"); }

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext) return 0;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

static int random_serial(X509 *cert) {
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof bytes) != 1) return 0;
    bytes[0] &= 0x7f;  // positive
    bytes[0] |= 0x01;  // and never shorter than 16 bytes
    BIGNUM *bn = BN_bin2bn(bytes, sizeof bytes, NULL);
    int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);
    return ok;
}

int tg_ca_create(const char *cert_path, const char *key_path, const char *common_name, int days, char *err, size_t errlen) {
    int rc = -1;
    EVP_PKEY *key = tg_generate_p256_key();
    X509 *cert = X509_new();
    FILE *kf = NULL, *cf = NULL;
    if (!key || !cert) { set_err(err, errlen, "key generation"); goto done; }
    X509_set_version(cert, 2);
    if (!random_serial(cert)) { set_err(err, errlen, "serial"); goto done; }
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), (long)days * 86400);
    X509_set_pubkey(cert, key);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"Tollgate", -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)common_name, -1, -1, 0);
    X509_set_issuer_name(cert, name);
    if (!add_ext(cert, cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
        !add_ext(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature") ||
        !add_ext(cert, cert, NID_subject_key_identifier, "hash")) { set_err(err, errlen, "extensions"); goto done; }
    if (!X509_sign(cert, key, EVP_sha256())) { set_err(err, errlen, "signing"); goto done; }
    int kfd = open(key_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (kfd < 0) { snprintf(err, errlen, "%s: %s", key_path, strerror(errno)); goto done; }
    kf = fdopen(kfd, "w");
    if (!kf || !PEM_write_PrivateKey(kf, key, NULL, NULL, 0, NULL, NULL)) { set_err(err, errlen, "writing key"); goto done; }
    int cfd = open(cert_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (cfd < 0) { snprintf(err, errlen, "%s: %s", cert_path, strerror(errno)); goto done; }
    cf = fdopen(cfd, "w");
    if (!cf || !PEM_write_X509(cf, cert)) { set_err(err, errlen, "writing certificate"); goto done; }
    rc = 0;
done:
    if (kf && fclose(kf) != 0) rc = -1;
    if (cf && fclose(cf) != 0) rc = -1;
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

X509 *tg_load_certificate(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    X509 *cert = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return cert;
}

EVP_PKEY *tg_load_private_key(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return key;
}

int tg_key_matches(X509 *cert, EVP_PKEY *key) { return X509_check_private_key(cert, key) == 1; }

static int64_t asn1_time_to_unix(const ASN1_TIME *t) {
    struct tm tm;
    if (!ASN1_TIME_to_tm(t, &tm)) return 0;
    return (int64_t)timegm(&tm);
}

int tg_certificate_info(X509 *cert, char *subject, size_t subject_len, int64_t *not_before, int64_t *not_after, unsigned char sha256[32]) {
    X509_NAME_oneline(X509_get_subject_name(cert), subject, (int)subject_len);
    *not_before = asn1_time_to_unix(X509_get0_notBefore(cert));
    *not_after = asn1_time_to_unix(X509_get0_notAfter(cert));
    unsigned int n = 32;
    return X509_digest(cert, EVP_sha256(), sha256, &n) == 1 ? 0 : -1;
}

char *tg_certificate_pem(X509 *cert) {
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(bio, cert);
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *copy = malloc((size_t)n + 1);
    memcpy(copy, data, (size_t)n);
    copy[n] = 0;
    BIO_free(bio);
    return copy;
}

int tg_certificate_names(X509 *cert, char *sans, size_t sans_len, char *issuer, size_t issuer_len) {
    sans[0] = 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        char item[128] = {0};
        if (gn->type == GEN_DNS) {
            snprintf(item, sizeof item, "DNS:%s", (const char *)ASN1_STRING_get0_data(gn->d.dNSName));
        } else if (gn->type == GEN_IPADD) {
            char ip[INET6_ADDRSTRLEN] = {0};
            int len = ASN1_STRING_length(gn->d.iPAddress);
            inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(gn->d.iPAddress), ip, sizeof ip);
            snprintf(item, sizeof item, "IP:%s", ip);
        }
        if (sans[0]) strncat(sans, ", ", sans_len - strlen(sans) - 1);
        strncat(sans, item, sans_len - strlen(sans) - 1);
    }
    GENERAL_NAMES_free(names);
    X509_NAME_get_text_by_NID(X509_get_issuer_name(cert), NID_commonName, issuer, (int)issuer_len);
    return 0;
}

void tg_free(void *p) { free(p); }

static int set_asn1_time(ASN1_TIME *field, int64_t unix_time) {
    return ASN1_TIME_set(field, (time_t)unix_time) != NULL;
}

X509 *tg_mint_leaf(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *leaf_key, const char *name, int is_ip, int64_t not_before, int64_t not_after) {
    X509 *cert = X509_new();
    if (!cert) return NULL;
    char san[300];
    snprintf(san, sizeof san, "%s:%s", is_ip ? "IP" : "DNS", name);
    X509_NAME *subject = X509_get_subject_name(cert);
    if (strlen(name) <= 64)
        X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    if (X509_set_version(cert, 2) && random_serial(cert) &&
        set_asn1_time(X509_getm_notBefore(cert), not_before) && set_asn1_time(X509_getm_notAfter(cert), not_after) &&
        X509_set_issuer_name(cert, X509_get_subject_name(ca)) && X509_set_pubkey(cert, leaf_key) &&
        add_ext(cert, ca, NID_basic_constraints, "critical,CA:FALSE") &&
        add_ext(cert, ca, NID_key_usage, "critical,digitalSignature") &&
        add_ext(cert, ca, NID_ext_key_usage, "serverAuth") &&
        add_ext(cert, ca, NID_subject_alt_name, san) &&
        add_ext(cert, ca, NID_authority_key_identifier, "keyid:always") &&
        X509_sign(cert, ca_key, EVP_sha256()))
        return cert;
    X509_free(cert);
    ERR_clear_error();
    return NULL;
}

// ALPN toward agents: only http/1.1 is offered; a client that wants h2 alone gets no ALPN and falls back.
static int select_http11(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                         const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl; (void)arg;
    static const unsigned char http11[] = "http/1.1";
    for (unsigned int i = 0; i < inlen;) {
        unsigned int len = in[i];
        if (i + 1 + len > inlen) break;
        if (len == 8 && memcmp(in + i + 1, http11, 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static const long tg_modes = SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;

// Read-ahead: OpenSSL reads what the socket holds in one recv instead of a record's 5-byte
// header and then its body — two system calls fewer per request and response. Records it
// reads ahead wait in its buffer where epoll cannot see them: tg_ssl_has_pending tells the
// connection to keep reading.
static void set_read_ahead(SSL_CTX *ctx) { SSL_CTX_set_read_ahead(ctx, 1); }

SSL_CTX *tg_server_context(void) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, tg_modes);
    set_read_ahead(ctx);
    SSL_CTX_set_alpn_select_cb(ctx, select_http11, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    return ctx;
}

SSL_CTX *tg_client_context(const char *extra_ca_file, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { set_err(err, errlen, "client context"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, tg_modes);
    set_read_ahead(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) { set_err(err, errlen, "system trust store"); SSL_CTX_free(ctx); return NULL; }
    if (extra_ca_file && SSL_CTX_load_verify_locations(ctx, extra_ca_file, NULL) != 1) {
        set_err(err, errlen, extra_ca_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

// A BIO over our non-blocking socket that first replays bytes already read (the ClientHello we
// parsed ourselves), then reads and writes the fd directly: no extra copy on the steady path.
typedef struct {
    int fd;
    uint8_t *prefix;
    size_t prefix_len;
    size_t prefix_pos;
} fd_bio_state;

static int fd_bio_read(BIO *bio, char *buf, int len) {
    fd_bio_state *st = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (st->prefix_pos < st->prefix_len) {
        size_t n = st->prefix_len - st->prefix_pos;
        if (n > (size_t)len) n = (size_t)len;
        memcpy(buf, st->prefix + st->prefix_pos, n);
        st->prefix_pos += n;
        if (st->prefix_pos == st->prefix_len) { free(st->prefix); st->prefix = NULL; st->prefix_len = st->prefix_pos = 0; }
        return (int)n;
    }
    ssize_t n;
    do { n = recv(st->fd, buf, (size_t)len, 0); } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(bio);
    return (int)n;
}

static int fd_bio_write(BIO *bio, const char *buf, int len) {
    fd_bio_state *st = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    ssize_t n;
    do { n = send(st->fd, buf, (size_t)len, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(bio);
    return (int)n;
}

static long fd_bio_ctrl(BIO *bio, int cmd, long num, void *ptr) {
    (void)bio; (void)num; (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int fd_bio_destroy(BIO *bio) {
    fd_bio_state *st = BIO_get_data(bio);
    if (st) { free(st->prefix); free(st); }
    BIO_set_data(bio, NULL);
    return 1;
}

static BIO_METHOD *fd_method;
static pthread_once_t fd_method_once = PTHREAD_ONCE_INIT;

static void fd_bio_method_init(void) {
    fd_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tollgate-fd");
    BIO_meth_set_read(fd_method, fd_bio_read);
    BIO_meth_set_write(fd_method, fd_bio_write);
    BIO_meth_set_ctrl(fd_method, fd_bio_ctrl);
    BIO_meth_set_destroy(fd_method, fd_bio_destroy);
}

static BIO_METHOD *fd_bio_method(void) {
    pthread_once(&fd_method_once, fd_bio_method_init);
    return fd_method;
}

static BIO *fd_bio(int fd, const uint8_t *prefix, size_t prefix_len) {
    BIO *bio = BIO_new(fd_bio_method());
    fd_bio_state *st = calloc(1, sizeof *st);
    if (!bio || !st) { BIO_free(bio); free(st); return NULL; }
    st->fd = fd;
    if (prefix_len) {
        st->prefix = malloc(prefix_len);
        memcpy(st->prefix, prefix, prefix_len);
        st->prefix_len = prefix_len;
    }
    BIO_set_data(bio, st);
    BIO_set_init(bio, 1);
    return bio;
}

SSL *tg_ssl_server(SSL_CTX *ctx, int fd, const uint8_t *prefix, size_t prefix_len, X509 *cert, EVP_PKEY *key) {
    SSL *ssl = SSL_new(ctx);
    BIO *bio = fd_bio(fd, prefix, prefix_len);
    if (!ssl || !bio || SSL_use_certificate(ssl, cert) != 1 || SSL_use_PrivateKey(ssl, key) != 1) {
        SSL_free(ssl);
        BIO_free(bio);
        return NULL;
    }
    SSL_set_bio(ssl, bio, bio);
    SSL_set_accept_state(ssl);
    return ssl;
}

SSL *tg_ssl_client(SSL_CTX *ctx, int fd, const char *sni, const char *verify_name, int verify_is_ip, SSL_SESSION *session) {
    SSL *ssl = SSL_new(ctx);
    BIO *bio = fd_bio(fd, NULL, 0);
    if (!ssl || !bio) { SSL_free(ssl); BIO_free(bio); return NULL; }
    SSL_set_bio(ssl, bio, bio);
    if (sni) SSL_set_tlsext_host_name(ssl, sni);
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (verify_name) {
        int ok = verify_is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, verify_name) : SSL_set1_host(ssl, verify_name);
        if (ok != 1) { SSL_free(ssl); return NULL; }
    }
    if (session) SSL_set_session(ssl, session);
    SSL_set_connect_state(ssl);
    return ssl;
}

static int map_result(SSL *ssl, int rc) {
    if (rc > 0) return rc;
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ: return TG_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return TG_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return TG_TLS_CLOSED;
    case SSL_ERROR_SYSCALL: return ERR_peek_error() ? TG_TLS_ERROR : TG_TLS_SYSCALL_EOF;
    default: return TG_TLS_ERROR;
    }
}

int tg_ssl_handshake(SSL *ssl) {
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    return rc == 1 ? 1 : map_result(ssl, rc);
}

int tg_ssl_has_pending(const SSL *ssl) { return SSL_has_pending(ssl); }

int tg_ssl_read(SSL *ssl, void *buf, int len) {
    ERR_clear_error();
    return map_result(ssl, SSL_read(ssl, buf, len));
}

int tg_ssl_write(SSL *ssl, const void *buf, int len) {
    ERR_clear_error();
    return map_result(ssl, SSL_write(ssl, buf, len));
}

void tg_ssl_shutdown(SSL *ssl) {
    ERR_clear_error();
    if (SSL_is_init_finished(ssl)) SSL_shutdown(ssl);
    ERR_clear_error();
}

void tg_ssl_free(SSL *ssl) { SSL_free(ssl); }

void tg_tls_take_error(char *buf, size_t len, int *alert_received) {
    *alert_received = -1;
    buf[0] = 0;
    unsigned long e;
    int first = 1;
    while ((e = ERR_get_error()) != 0) {
        if (first) {
            int reason = ERR_GET_REASON(e);
            if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256)
                *alert_received = reason - SSL_AD_REASON_OFFSET;
            const char *text = ERR_reason_error_string(e);
            snprintf(buf, len, "%s", text ? text : "TLS error");
            first = 0;
        }
    }
    if (first) snprintf(buf, len, "%s", errno ? strerror(errno) : "connection closed during TLS");
}

long tg_ssl_verify_result(const SSL *ssl, const char **text) {
    long result = SSL_get_verify_result(ssl);
    *text = X509_verify_cert_error_string(result);
    return result;
}

const char *tg_ssl_cipher_name(const SSL *ssl) { return SSL_get_cipher_name(ssl); }
