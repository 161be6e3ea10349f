#define _GNU_SOURCE
#include "tollgate_shim.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <pthread.h>
#include <malloc.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/resource.h>
#include <sys/syscall.h>

// linux/netfilter_ipv4.h and linux/netfilter_ipv6/ip6_tables.h clash with netinet/in.h.
#define TG_SO_ORIGINAL_DST 80
#define TG_IP6T_SO_ORIGINAL_DST 80

const int TG_EPOLLIN = EPOLLIN, TG_EPOLLOUT = EPOLLOUT, TG_EPOLLERR = EPOLLERR,
          TG_EPOLLHUP = EPOLLHUP, TG_EPOLLRDHUP = EPOLLRDHUP;
const int TG_EPOLL_CTL_ADD = EPOLL_CTL_ADD, TG_EPOLL_CTL_MOD = EPOLL_CTL_MOD,
          TG_EPOLL_CTL_DEL = EPOLL_CTL_DEL;
const int TG_SOCK_STREAM = SOCK_STREAM, TG_SOL_SOCKET = SOL_SOCKET, TG_SO_REUSEADDR = SO_REUSEADDR,
          TG_SO_REUSEPORT = SO_REUSEPORT, TG_SO_ERROR = SO_ERROR;
const int TG_IPPROTO_TCP = IPPROTO_TCP, TG_TCP_NODELAY = TCP_NODELAY,
          TG_IPPROTO_IPV6 = IPPROTO_IPV6, TG_IPV6_V6ONLY = IPV6_V6ONLY;
const int TG_MSG_NOSIGNAL = MSG_NOSIGNAL, TG_MSG_PEEK = MSG_PEEK;

int tg_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int tg_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int tg_epoll_wait(int epfd, uint64_t *datas, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        datas[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

int tg_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int tg_accept(int fd, struct sockaddr_storage *addr, socklen_t *len) {
    *len = sizeof *addr;
    return accept4(fd, (struct sockaddr *)addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int tg_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int tg_original_dst(int fd, int family, struct sockaddr_storage *out, socklen_t *len) {
    *len = sizeof *out;
    if (family == AF_INET6)
        return getsockopt(fd, SOL_IPV6, TG_IP6T_SO_ORIGINAL_DST, out, len);
    return getsockopt(fd, SOL_IP, TG_SO_ORIGINAL_DST, out, len);
}

int tg_socket(int family, int type) { return socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0); }

int tg_setsockopt_int(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof value);
}

int tg_getsockopt_int(int fd, int level, int name, int *value) {
    socklen_t len = sizeof *value;
    return getsockopt(fd, level, name, value, &len);
}

ssize_t tg_send(int fd, const void *buf, size_t len) { return send(fd, buf, len, MSG_NOSIGNAL); }

int tg_signalfd_for_control_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    sigdelset(&set, SIGPIPE);
    return signalfd(-1, &set, SFD_CLOEXEC);  // blocking: the main thread waits on it
}

int tg_read_signal(int sfd) {
    struct signalfd_siginfo info;
    ssize_t n = read(sfd, &info, sizeof info);
    if (n != sizeof info) return -1;
    return (int)info.ssi_signo;
}

void tg_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

int tg_set_thread_background(void) {
    struct sched_param param = {0};
    int rc = pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
    if (rc != 0) { errno = rc; return -1; }
    // Linux applies a thread id's nice value to that thread alone.
    return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
}

int tg_semaphore_eventfd(void) { return eventfd(0, EFD_SEMAPHORE | EFD_CLOEXEC); }

void tg_keep_freed_memory(void) {
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
}

// glibc's per-thread cache keeps 7 freed chunks of each size. An event loop frees the heads and
// flow records of a whole iteration's exchanges together, so most of them overflowed into the
// allocator's bins and the next iteration's allocations came back through its slow path (0.33
// µs per request more with Elasticsearch logging than without, in the bench profiles; 0.12
// with the larger cache). Only the GLIBC_TUNABLES variable, read at start-up, raises the count;
// the daemon re-executes itself once with it set.
int tg_reexec_with_malloc_tunables(char *const argv[], int count) {
    static const char tunable[] = "glibc.malloc.tcache_count";
    // A set-user-ID start has its GLIBC_TUNABLES removed: re-executing would never end.
    if (getauxval(AT_SECURE)) return 0;
    const char *current = getenv("GLIBC_TUNABLES");
    if (current && strstr(current, tunable)) return 0;  // already set: by us, or by the operator
    // Started through the dynamic loader (ld-linux... tollgate run ...), /proc/self/exe is the
    // loader, which would take "run" for the program.
    char exe[4096];
    ssize_t exe_length = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (exe_length <= 0) return -1;
    exe[exe_length] = 0;
    const char *base = strrchr(exe, '/');
    if (strncmp(base ? base + 1 : exe, "ld-", 3) == 0) return -1;
    char value[1024];
    int length = current && *current ? snprintf(value, sizeof value, "%s:%s=%d", current, tunable, count)
                                     : snprintf(value, sizeof value, "%s=%d", tunable, count);
    if (length < 0 || (size_t)length >= sizeof value) return -1;
    char *previous = current ? strdup(current) : NULL;
    if (setenv("GLIBC_TUNABLES", value, 1) == 0) {
        execv("/proc/self/exe", argv);
        // Not re-executed: run on with the default cache, and the environment as it was.
        if (previous) setenv("GLIBC_TUNABLES", previous, 1); else unsetenv("GLIBC_TUNABLES");
    }
    free(previous);
    return -1;
}
