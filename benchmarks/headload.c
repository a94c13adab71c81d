/*
 * A closed-loop HEAD load generator for benchmarks/run.py.
 *
 * wrk cannot measure HEAD: it waits for the Content-Length bytes a HEAD
 * response announces but never sends.  This does what wrk does for one
 * request shape: C connections on one epoll thread, each sending HEAD and,
 * once the header block has arrived, the next HEAD.
 *
 *   headload HOST PORT PATH CONNECTIONS SECONDS ACCEPT
 *
 * prints: requests=N seconds=S rps=R p50_ms=A p99_ms=B errors=E
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSIZE 8192
#define MAXCONN 1024

struct conn {
    int fd;
    size_t used;
    double started;
    char buf[BUFSIZE];
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static char request[2048];
static size_t requestLen;
static struct sockaddr_in address;

static int send_request(struct conn *c) {
    c->used = 0;
    c->started = now();
    ssize_t sent = send(c->fd, request, requestLen, MSG_NOSIGNAL);
    return sent == (ssize_t)requestLen ? 0 : -1;
}

static int open_conn(int ep, struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&address, sizeof address) < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return send_request(c);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT PATH CONNECTIONS SECONDS ACCEPT\n", argv[0]);
        return 2;
    }
    int conns = atoi(argv[4]);
    double seconds = atof(argv[5]);
    if (conns < 1 || conns > MAXCONN || seconds <= 0) {
        fprintf(stderr, "bad connections or seconds\n");
        return 2;
    }
    address.sin_family = AF_INET;
    address.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &address.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", argv[1]);
        return 2;
    }
    requestLen = snprintf(request, sizeof request, "HEAD %s HTTP/1.1\r\nHost: %s:%s\r\nAccept: %s\r\n\r\n",
                          argv[3], argv[1], argv[2], argv[6]);
    if (requestLen >= sizeof request) {
        fprintf(stderr, "request too long\n");
        return 2;
    }

    size_t cap = 1 << 20, count = 0;
    double *latencies = malloc(cap * sizeof *latencies);
    struct conn *all = calloc(conns, sizeof *all);
    int ep = epoll_create1(0);
    long errors = 0;
    for (int i = 0; i < conns; i++) {
        if (open_conn(ep, &all[i]) < 0) {
            fprintf(stderr, "cannot connect: %s\n", strerror(errno));
            return 1;
        }
    }
    double start = now(), end = start + seconds;
    struct epoll_event events[MAXCONN];
    while (now() < end) {
        int n = epoll_wait(ep, events, MAXCONN, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            ssize_t got = recv(c->fd, c->buf + c->used, BUFSIZE - 1 - c->used, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            if (got <= 0 || c->used + got >= BUFSIZE - 1) {
                errors++;
                close(c->fd);
                if (open_conn(ep, c) < 0) {
                    return 1;
                }
                continue;
            }
            c->used += got;
            c->buf[c->used] = 0;
            char *endOfHeaders = strstr(c->buf, "\r\n\r\n");
            if (endOfHeaders == NULL) {
                continue;
            }
            double t = now();
            if (strncmp(c->buf, "HTTP/1.1 2", 10) != 0 || endOfHeaders + 4 != c->buf + c->used) {
                errors++; /* a non-2xx answer, or bytes after the headers */
            } else if (t < end) {
                if (count == cap) {
                    cap *= 2;
                    latencies = realloc(latencies, cap * sizeof *latencies);
                }
                latencies[count++] = (t - c->started) * 1000.0;
            }
            if (send_request(c) < 0) {
                errors++;
            }
        }
    }
    double elapsed = now() - start;
    if (count == 0) {
        printf("requests=0 seconds=%.3f rps=0 p50_ms=0 p99_ms=0 errors=%ld\n", elapsed, errors);
        return 1;
    }
    qsort(latencies, count, sizeof *latencies, cmp);
    size_t p50 = (size_t)(0.50 * count + 0.999999) - 1, p99 = (size_t)(0.99 * count + 0.999999) - 1;
    printf("requests=%zu seconds=%.3f rps=%.2f p50_ms=%.3f p99_ms=%.3f errors=%ld\n", count, elapsed,
           count / elapsed, latencies[p50], latencies[p99], errors);
    return 0;
}
