/* The floor for chat fan-out cost: a minimal single-threaded epoll chat
 * server, nothing on the path but framing and the writes.
 *
 *   gcc -O2 -o fanout perf/floor/fanout.c
 *   fanout PORT perline|batched        (PORT 0 picks one)
 *
 * Every complete line from member i goes to every other member as
 * `user-i: LINE\n`. `perline` writes it to each recipient at once (one
 * write(2) per line per recipient); `batched` appends it to each recipient's
 * pending buffer and, after all ready events of one epoll_wait, makes one
 * write per recipient with mail. Each client has a fixed 1 MiB out buffer
 * (for what the socket would not take) and a 64 KiB in buffer; a client that
 * overflows either is dropped. Level-triggered; no greetings, no commands. */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define OUT_CAP (1 << 20)
#define IN_CAP (1 << 16)

struct client {
    int fd, id, slot, dirty, watching_out;
    size_t in_len, out_len;
    char in[IN_CAP];
    char *out;
};

static struct client **by_fd;   /* fd -> client */
static struct client **members; /* the connected, in no order */
static int n_members, ep, batched;
static struct client **dirty;   /* recipients with mail this round, and the dropped */
static int n_dirty;

static void die(const char *what) { perror(what); exit(1); }

static void watch(struct client *c, int out) {
    if (c->watching_out == out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.fd = c->fd};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->watching_out = out;
}

static void drop(struct client *c) {
    close(c->fd); /* also leaves the epoll set */
    by_fd[c->fd] = NULL;
    members[c->slot] = members[--n_members];
    members[c->slot]->slot = c->slot;
    c->fd = -1; /* freed at the end of the round: callers may still hold it */
    if (!c->dirty) { c->dirty = 1; dirty[n_dirty++] = c; }
}

/* Writes what is pending; returns 0 if the client was dropped. */
static int flush(struct client *c) {
    while (c->out_len > 0) {
        ssize_t n = write(c->fd, c->out, c->out_len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) { drop(c); return 0; }
        memmove(c->out, c->out + n, c->out_len - n);
        c->out_len -= n;
    }
    watch(c, c->out_len > 0);
    return 1;
}

/* Queues bytes after what is pending; drops the client on overflow. */
static void queue(struct client *c, const char *msg, size_t len) {
    if (c->out_len + len > OUT_CAP) { drop(c); return; }
    memcpy(c->out + c->out_len, msg, len);
    c->out_len += len;
}

static void deliver(struct client *from, const char *msg, size_t len) {
    for (int i = n_members - 1; i >= 0; i--) { /* downwards: drop() moves the last into i */
        struct client *c = members[i];
        if (c == from) continue;
        if (batched || c->out_len > 0) { /* order: behind what already waits */
            queue(c, msg, len);
            if (batched && c->fd >= 0 && !c->dirty) { c->dirty = 1; dirty[n_dirty++] = c; }
            continue;
        }
        ssize_t n = write(c->fd, msg, len);
        if (n == (ssize_t)len) continue;
        if (n < 0 && errno != EAGAIN && errno != EINTR) { drop(c); continue; }
        if (n < 0) n = 0;
        queue(c, msg + n, len - n);
        if (c->fd >= 0) watch(c, 1);
    }
}

static void readable(struct client *c) {
    static char msg[IN_CAP + 32];
    ssize_t n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) { drop(c); return; }
    c->in_len += n;
    char *start = c->in, *end = c->in + c->in_len, *nl;
    while (c->fd >= 0 && (nl = memchr(start, '\n', end - start))) {
        int head = sprintf(msg, "user-%d: ", c->id);
        memcpy(msg + head, start, nl + 1 - start);
        deliver(c, msg, head + (nl + 1 - start));
        start = nl + 1;
    }
    if (c->fd < 0) return;
    c->in_len = end - start;
    memmove(c->in, start, c->in_len);
    if (c->in_len == IN_CAP) drop(c); /* a line longer than the buffer */
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[2], "perline") && strcmp(argv[2], "batched"))) {
        fprintf(stderr, "usage: %s PORT perline|batched\n", argv[0]);
        return 2;
    }
    batched = !strcmp(argv[2], "batched");
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    getrlimit(RLIMIT_NOFILE, &rl);
    size_t max_fd = rl.rlim_cur > (1 << 20) ? (1 << 20) : rl.rlim_cur;
    by_fd = calloc(max_fd, sizeof *by_fd);
    members = calloc(max_fd, sizeof *members);
    dirty = calloc(2 * max_fd, sizeof *dirty); /* a freed fd may come back in the same round */

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, SOMAXCONN) < 0) die("listen");
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    fprintf(stderr, "listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));

    if ((ep = epoll_create1(0)) < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (int next_id = 0;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct client *c = calloc(1, sizeof *c);
                    if ((size_t)cfd >= max_fd || !c || !(c->out = malloc(OUT_CAP))) { close(cfd); free(c); continue; }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c->fd = cfd, c->id = next_id++, c->slot = n_members;
                    by_fd[cfd] = members[n_members++] = c;
                    ev = (struct epoll_event){.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev);
                }
                continue;
            }
            struct client *c = by_fd[fd];
            if (!c) continue; /* dropped earlier in this round */
            if ((evs[i].events & EPOLLOUT) && !flush(c)) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) readable(c);
        }
        for (int i = 0; i < n_dirty; i++) { /* batched: one write per recipient */
            struct client *c = dirty[i];
            c->dirty = 0;
            if (c->fd >= 0) flush(c);
            else { free(c->out); free(c); }
        }
        n_dirty = 0;
    }
}
