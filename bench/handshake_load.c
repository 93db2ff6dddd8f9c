/*
 * bench/cluster.py's handshake load: as many keepconn handshakes per second
 * as a server takes, from a process that costs far less per handshake than
 * the server does (a Python load process would need a core of its own on
 * the 2-core machine it is measured on).  Each connection sends a HELLO,
 * waits for the server's, and closes with a reset (no TIME_WAIT).
 *
 *   handshake_load PORT CONCURRENCY SECONDS HELLO_HEX  ->  {"per_second": N}
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in server;
static unsigned char hello[512];
static size_t helloLen;
static int ep;

struct slot { int fd; int state; size_t got; unsigned char buf[512]; };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void open_slot(struct slot *s) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct linger l = {1, 0};
    setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    s->state = 0;
    s->got = 0;
    connect(s->fd, (struct sockaddr *)&server, sizeof server);
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
}

static void reopen(struct slot *s) {
    close(s->fd);  /* also leaves the epoll set */
    open_slot(s);
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int concurrency = atoi(argv[2]);
    double seconds = atof(argv[3]);
    const char *hex = argv[4];
    helloLen = strlen(hex) / 2;
    for (size_t i = 0; i < helloLen; i++) sscanf(hex + 2 * i, "%2hhx", &hello[i]);
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons(atoi(argv[1]));
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ep = epoll_create1(0);
    struct slot *slots = calloc(concurrency, sizeof *slots);
    for (int i = 0; i < concurrency; i++) open_slot(&slots[i]);
    long done = 0;
    double start = now(), deadline = start + seconds;
    struct epoll_event events[256];
    while (now() < deadline) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < n; i++) {
            struct slot *s = events[i].data.ptr;
            if (events[i].events & (EPOLLERR | EPOLLHUP) && s->state == 0) { reopen(s); continue; }
            if (s->state == 0) {
                if (send(s->fd, hello, helloLen, MSG_NOSIGNAL) != (ssize_t)helloLen) { reopen(s); continue; }
                s->state = 1;
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }
            ssize_t r = recv(s->fd, s->buf + s->got, sizeof s->buf - s->got, 0);
            if (r <= 0) { if (r < 0 && errno == EAGAIN) continue; reopen(s); continue; }
            s->got += r;
            if (s->got >= 4) {
                size_t length = (s->buf[0] << 24) | (s->buf[1] << 16) | (s->buf[2] << 8) | s->buf[3];
                if (s->got >= 4 + length) { done++; reopen(s); }
            }
        }
    }
    printf("{\"per_second\": %.1f}\n", done / (now() - start));
    return 0;
}
