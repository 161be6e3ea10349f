// The thin C layer under Tollgate: syscalls and macros that Swift cannot import or call
// directly (variadic fcntl, packed epoll_event, SO_ORIGINAL_DST constants).
#ifndef TOLLGATE_SHIM_H
#define TOLLGATE_SHIM_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include "tollgate_tls.h"

/// epoll_create1(EPOLL_CLOEXEC).
int tg_epoll_create(void);
/// epoll_ctl with the event packed by C: `data` is the (generation << 32 | slot) tag.
int tg_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
/// epoll_wait that unpacks the (packed on x86_64) epoll_event array into two plain arrays.
int tg_epoll_wait(int epfd, uint64_t *datas, uint32_t *events, int max, int timeout_ms);

/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC).
int tg_eventfd(void);

/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int tg_accept(int fd, struct sockaddr_storage *addr, socklen_t *len);

/// fcntl(F_SETFL, flags | O_NONBLOCK); fcntl is variadic and cannot be called from Swift.
int tg_set_nonblocking(int fd);

/// The pre-NAT destination of a REDIRECTed connection: SO_ORIGINAL_DST for IPv4,
/// IP6T_SO_ORIGINAL_DST for IPv6 (both 80; linux/netfilter headers clash with netinet/in.h).
int tg_original_dst(int fd, int family, struct sockaddr_storage *out, socklen_t *len);

/// Socket creation with SOCK_NONBLOCK | SOCK_CLOEXEC.
int tg_socket(int family, int type);

/// Integer setsockopt.
int tg_setsockopt_int(int fd, int level, int name, int value);
/// Integer getsockopt (SO_ERROR after a non-blocking connect).
int tg_getsockopt_int(int fd, int level, int name, int *value);

/// Constants that import as macros of other macros or enums.
extern const int TG_EPOLLIN, TG_EPOLLOUT, TG_EPOLLERR, TG_EPOLLHUP, TG_EPOLLRDHUP;
extern const int TG_EPOLL_CTL_ADD, TG_EPOLL_CTL_MOD, TG_EPOLL_CTL_DEL;
extern const int TG_SOCK_STREAM, TG_SOL_SOCKET, TG_SO_REUSEADDR, TG_SO_REUSEPORT, TG_SO_ERROR;
extern const int TG_IPPROTO_TCP, TG_TCP_NODELAY, TG_IPPROTO_IPV6, TG_IPV6_V6ONLY;
extern const int TG_MSG_NOSIGNAL, TG_MSG_PEEK;

/// send(2) with MSG_NOSIGNAL so a reset peer gives EPIPE instead of killing the process.
ssize_t tg_send(int fd, const void *buf, size_t len);

/// Blocks SIGPIPE/SIGTERM/SIGHUP/SIGINT in the calling thread (inherited by threads it starts)
/// and returns a signalfd for them, so signals are read on a loop instead of in a handler.
int tg_signalfd_for_control_signals(void);
/// Blocks until a control signal arrives; returns its number, or -1.
int tg_read_signal(int sfd);

/// Names the calling thread (pthread_setname_np is not visible to Swift on glibc).
void tg_set_thread_name(const char *name);
/// Makes the calling thread yield to the event loops: SCHED_BATCH (no wake-up preemption)
/// and nice 10. 0 on success, -1 with errno.
int tg_set_thread_background(void);

/// A blocking eventfd in semaphore mode: each read takes one unit (resolver worker threads wait on it).
int tg_semaphore_eventfd(void);

/// mallopt: raise the trim and mmap thresholds so buffers freed after each exchange are reused
/// instead of being returned to the kernel (malloc.h is not part of Swift's Glibc module).
void tg_keep_freed_memory(void);
/// Re-executes the program (argv as given) with glibc's per-thread cache of freed chunks raised
/// from 7 to `count` per size. Returns 0 when that is not needed (GLIBC_TUNABLES sets the count
/// already, or a set-user-ID start), -1 when it could not be done.
int tg_reexec_with_malloc_tunables(char *const argv[], int count);

/// gzip (RFC 1952) of `len` bytes into `out` (capacity `cap`); returns the compressed size or -1.
long tg_gzip(const void *in, size_t len, void *out, size_t cap);
/// An upper bound for tg_gzip's output.
size_t tg_gzip_bound(size_t len);
/// gunzip into `out`; returns the size or -1 (used by tests and for reading rotated logs).
long tg_gunzip(const void *in, size_t len, void *out, size_t cap);
/// The encoder's hash table, shared by the chunks one thread compresses so that it is cleared
/// once, not per chunk (tg_deflate_table_new returns NULL when out of memory).
typedef struct tg_deflate_table tg_deflate_table;
tg_deflate_table *tg_deflate_table_new(void);
void tg_deflate_table_free(tg_deflate_table *table);
/// Raw deflate (RFC 1951) of `len` bytes as a non-final block ended by a sync flush, so chunks
/// compressed apart can be concatenated into one stream; returns the size or -1. `cap` must be
/// at least tg_gzip_bound(len). Matches never reach into earlier chunks.
long tg_deflate_chunk(tg_deflate_table *table, const void *in, size_t len, void *out, size_t cap);
/// The most bytes tg_gzip_start and tg_gzip_finish_chunks write.
#define TG_GZIP_FRAME_BYTES 10
/// Writes a gzip member's header (before tg_deflate_chunk chunks); returns its size.
size_t tg_gzip_start(void *out);
/// Ends a gzip member made of tg_deflate_chunk chunks: an empty final block and the trailer,
/// with the CRC-32 and length of all the chunks' uncompressed data; returns the size written.
size_t tg_gzip_finish_chunks(void *out, uint32_t crc, uint64_t len);
/// Inflates one tg_deflate_chunk chunk into `out`; returns the size or -1.
long tg_inflate_chunk(const void *in, size_t len, void *out, size_t cap);
/// The CRC-32 of two pieces laid end to end, from the CRC-32 of each (zlib's crc32_combine).
uint32_t tg_crc32_combine(uint32_t first, uint32_t second, size_t second_length);
/// Compresses a whole file to `destination` (gzip); 0 on success.
int tg_gzip_file(const char *source, const char *destination);
/// CRC-32C (Castagnoli) of a buffer, for spool entries; hardware-accelerated where the CPU has it.
uint32_t tg_crc32c(const void *buf, size_t len);
/// CRC-32 as gzip and zlib define it, continuing `crc` (0 to start), like zlib's crc32_z.
uint32_t tg_crc32(uint32_t crc, const void *buf, size_t len);

/// `len` bytes of `src` as the inside of a JSON string (quotes, backslashes, control characters
/// and DEL escaped) at `dst`; returns the bytes written. `dst` needs room for 6 * len + 16.
size_t tg_json_escape(void *dst, const void *src, size_t len);
/// A header field's name and value as offsets into its head's bytes: the layout of the first
/// four stored properties of TollgateHTTP's `HeaderField`.
typedef struct {
    int32_t name_start, name_count, value_start, value_count;
} tg_header_span;
/// Header names whose values flow records never show, and what they show instead.
typedef struct tg_secret_headers tg_secret_headers;
/// A table of `count` names (lower case, `lengths[i]` bytes each, laid end to end in `names`);
/// NULL when out of memory.
tg_secret_headers *tg_secret_headers_new(const void *names, const size_t *lengths, size_t count, const void *marker,
                                         size_t marker_len);
/// Frees a table of tg_secret_headers_new (NULL is ignored).
void tg_secret_headers_free(tg_secret_headers *table);
/// Room `tg_json_headers` may need for `count` fields of a head of `head_len` bytes.
size_t tg_json_headers_bound(const tg_secret_headers *secrets, size_t head_len, size_t count);
/// Header fields as a JSON object at `dst`: names (tokens) lower-cased, values escaped, the
/// values of a repeated name joined with ", " under its first occurrence, secret names' values
/// replaced by the marker. `fields` holds `count` records `stride` bytes apart, each starting
/// with a tg_header_span into `head`; the spans must lie within the head's `head_len` bytes
/// and not overlap one another (as a parsed head's names and values do), which the bound
/// relies on. `secrets` must not be NULL. Returns the bytes written.
size_t tg_json_headers(void *dst, const void *head, const void *fields, size_t count, size_t stride,
                       const tg_secret_headers *secrets);

#endif
