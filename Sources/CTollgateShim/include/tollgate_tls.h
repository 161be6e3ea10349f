// The OpenSSL side of the shim: CA and leaf minting, contexts, and SSL objects over our
// non-blocking sockets. Everything here exists because it is a macro, a callback, or a long
// sequence of X509 calls better kept in one C function than spread through Swift.
#ifndef TOLLGATE_TLS_H
#define TOLLGATE_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/evp.h>

/// Results of tg_ssl_* I/O calls (n > 0 is a byte count).
enum {
    TG_TLS_CLOSED = 0,        /// close_notify received
    TG_TLS_WANT_READ = -1,
    TG_TLS_WANT_WRITE = -2,
    TG_TLS_ERROR = -3,        /// see tg_tls_last_error
    TG_TLS_SYSCALL_EOF = -4,  /// peer closed without close_notify
};

/// Creates an ECDSA P-256 CA (key mode 0600, created exclusively). Returns 0 or -1 with `err` set.
int tg_ca_create(const char *cert_path, const char *key_path, const char *common_name, int days, char *err, size_t errlen);
X509 *tg_load_certificate(const char *path);
EVP_PKEY *tg_load_private_key(const char *path);
/// True when the key belongs to the certificate.
int tg_key_matches(X509 *cert, EVP_PKEY *key);
/// Subject (one line), validity as Unix times, SHA-256 fingerprint.
int tg_certificate_info(X509 *cert, char *subject, size_t subject_len, int64_t *not_before, int64_t *not_after, unsigned char sha256[32]);
/// The certificate as PEM text (caller frees with tg_free).
char *tg_certificate_pem(X509 *cert);
/// Subject alternative names joined by ", " and the issuer's common name (for tests and logs).
int tg_certificate_names(X509 *cert, char *sans, size_t sans_len, char *issuer, size_t issuer_len);
void tg_free(void *p);

EVP_PKEY *tg_generate_p256_key(void);
/// A leaf for `name` (DNS name, or IP literal when is_ip) signed by the CA, valid [not_before, not_after].
X509 *tg_mint_leaf(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *leaf_key, const char *name, int is_ip, int64_t not_before, int64_t not_after);

/// The server context toward agents: TLS 1.2–1.3, tickets, released idle buffers, ALPN http/1.1 only.
SSL_CTX *tg_server_context(void);
/// The client context toward origins: verify against the system store plus `extra_ca_file` (may be NULL).
SSL_CTX *tg_client_context(const char *extra_ca_file, char *err, size_t errlen);

/// A server SSL over `fd` that first replays `prefix` (the ClientHello bytes already read).
SSL *tg_ssl_server(SSL_CTX *ctx, int fd, const uint8_t *prefix, size_t prefix_len, X509 *cert, EVP_PKEY *key);
/// A client SSL over `fd`: SNI (may be NULL), and name or IP to verify.
SSL *tg_ssl_client(SSL_CTX *ctx, int fd, const char *sni, const char *verify_name, int verify_is_ip, SSL_SESSION *session);
int tg_ssl_handshake(SSL *ssl);
int tg_ssl_read(SSL *ssl, void *buf, int len);
/// 1 when OpenSSL holds bytes read from the socket that SSL_read has not returned yet.
int tg_ssl_has_pending(const SSL *ssl);
int tg_ssl_write(SSL *ssl, const void *buf, int len);
/// Sends close_notify (best effort, non-blocking).
void tg_ssl_shutdown(SSL *ssl);
void tg_ssl_free(SSL *ssl);
/// Takes the error of the last failed call on this thread: its text, and the TLS alert the peer
/// sent when that was the cause (e.g. 48 unknown_ca), else -1. Clears the queue.
void tg_tls_take_error(char *buf, size_t len, int *alert_received);
/// The upstream certificate verification result (X509_V_OK is 0) and its text.
long tg_ssl_verify_result(const SSL *ssl, const char **text);
const char *tg_ssl_cipher_name(const SSL *ssl);

#endif
