/*
 * netecho: request/response of checksummed messages between two machines.
 *
 *   netecho --serve [--port P]
 *       Echo every message that arrives over TCP or UDP on port P (default 7007), for
 *       ever (a daemon). A TCP message whose checksum is wrong is reported on stderr and
 *       its connection closed.
 *   netecho --connect HOST [--port P] [--count N] [--size BYTES] [--udp] [--timeout-ms T]
 *       Send N messages (default 100) of BYTES bytes (default 256) and check each reply.
 *       Over TCP a wrong reply exits 2 (DETECTED), no reply within T ms (default 10000)
 *       exits 3. Over UDP (--udp, T default 500 ms, no retransmission) each message that
 *       gets no reply in time is lost, each reply with a wrong checksum is corrupted; any
 *       of either exits 1 with a DETECTED summary. Before the counted messages the UDP
 *       client probes until the server answers (10 s at most, else exit 3), as the TCP
 *       client retries its connection: the server may start after it.
 *
 * HOST is a name from /etc/hosts (the guest agent writes it) or an IPv4 address. The
 * summary line on stdout is the same in every fault-free run; nothing else is printed on
 * success. Message i carries bytes of a generator seeded with i, then their CRC-32.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PORT 7007
#define MAX_SIZE 65000
#define MAX_CLIENTS 16
#define HEADER_BYTES 8 /* UDP: sequence number, CRC-32 */
#define PROBE 0xffffffffu /* UDP: the sequence number of a probe */
#define READY_MS 10000    /* how long a client waits for its server to answer at all */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static uint32_t crc32_of(const unsigned char *data, size_t len)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++)
        c = crc_table[(c ^ data[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static void fill(unsigned char *data, size_t len, uint32_t index)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (index + 1);
    for (size_t i = 0; i < len; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        data[i] = (unsigned char)(x >> 56);
    }
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int usage(void)
{
    fprintf(stderr, "usage: netecho --serve [--port P] | --connect HOST [--port P] [--count N] "
                    "[--size BYTES] [--udp] [--timeout-ms T]\n");
    return 64;
}

/* HOST from /etc/hosts, else as a dotted address. */
static int resolve(const char *host, struct in_addr *out)
{
    if (inet_pton(AF_INET, host, out) == 1)
        return 0;
    FILE *hosts = fopen("/etc/hosts", "r");
    char line[256];
    if (!hosts)
        return -1;
    while (fgets(line, sizeof line, hosts)) {
        char *save = NULL;
        char *address = strtok_r(line, " \t\r\n", &save);
        if (!address || address[0] == '#')
            continue;
        for (char *name = strtok_r(NULL, " \t\r\n", &save); name;
             name = strtok_r(NULL, " \t\r\n", &save)) {
            if (strcmp(name, host) == 0 && inet_pton(AF_INET, address, out) == 1) {
                fclose(hosts);
                return 0;
            }
        }
    }
    fclose(hosts);
    return -1;
}

/* Reads exactly len bytes; 0 on success, -1 on EOF or error (errno EAGAIN: timeout). */
static int read_full(int fd, unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = 0;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---------------------------------------------------------------- server */

struct client {
    int fd;
    size_t have;
    size_t need; /* 4 + length + 4 once the length is known */
    unsigned char buf[4 + MAX_SIZE + 4];
};

static void serve_udp(int udp)
{
    static unsigned char buf[HEADER_BYTES + MAX_SIZE];
    struct sockaddr_in from;
    socklen_t fromlen = sizeof from;
    ssize_t n = recvfrom(udp, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fromlen);
    if (n < HEADER_BYTES)
        return;
    if (crc32_of(buf + HEADER_BYTES, (size_t)n - HEADER_BYTES) != get32(buf + 4))
        fprintf(stderr, "netecho: bad checksum in udp message %u\n", get32(buf));
    sendto(udp, buf, (size_t)n, 0, (struct sockaddr *)&from, fromlen);
}

/* Reads what is there for one TCP client; -1 closes it. */
static int serve_tcp(struct client *c)
{
    size_t want = c->need ? c->need : 4;
    ssize_t n = read(c->fd, c->buf + c->have, want - c->have);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 0;
    if (n <= 0)
        return -1;
    c->have += (size_t)n;
    if (!c->need && c->have == 4) {
        uint32_t length = get32(c->buf);
        if (length > MAX_SIZE) {
            fprintf(stderr, "netecho: DETECTED bad message length %u\n", length);
            return -1;
        }
        c->need = 4 + length + 4;
    }
    if (c->need && c->have == c->need) {
        size_t length = c->need - 8;
        if (crc32_of(c->buf + 4, length) != get32(c->buf + 4 + length)) {
            fprintf(stderr, "netecho: DETECTED bad checksum in a tcp message\n");
            return -1;
        }
        if (write_full(c->fd, c->buf, c->need) != 0)
            return -1;
        c->have = c->need = 0;
    }
    return 0;
}

static int serve(int port)
{
    static struct client clients[MAX_CLIENTS];
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1;
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    if (tcp < 0 || udp < 0) {
        perror("netecho: socket");
        return 1;
    }
    setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(tcp, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(tcp, 8) != 0
        || bind(udp, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("netecho: bind");
        return 1;
    }
    for (int i = 0; i < MAX_CLIENTS; i++)
        clients[i].fd = -1;
    for (;;) {
        struct pollfd fds[2 + MAX_CLIENTS];
        int slot[2 + MAX_CLIENTS];
        int count = 0;
        fds[count].fd = tcp;
        fds[count++].events = POLLIN;
        fds[count].fd = udp;
        fds[count++].events = POLLIN;
        for (int i = 0; i < MAX_CLIENTS; i++) {
            if (clients[i].fd >= 0) {
                slot[count] = i;
                fds[count].fd = clients[i].fd;
                fds[count++].events = POLLIN;
            }
        }
        if (poll(fds, (nfds_t)count, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("netecho: poll");
            return 1;
        }
        if (fds[0].revents & POLLIN) {
            int fd = accept(tcp, NULL, NULL);
            int i = 0;
            while (i < MAX_CLIENTS && clients[i].fd >= 0)
                i++;
            if (fd >= 0 && i < MAX_CLIENTS) {
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                clients[i].fd = fd;
                clients[i].have = clients[i].need = 0;
            } else if (fd >= 0) {
                close(fd);
            }
        }
        if (fds[1].revents & POLLIN)
            serve_udp(udp);
        for (int k = 2; k < count; k++) {
            if (fds[k].revents && serve_tcp(&clients[slot[k]]) != 0) {
                close(clients[slot[k]].fd);
                clients[slot[k]].fd = -1;
            }
        }
    }
}

/* ---------------------------------------------------------------- clients */

static int connect_tcp(struct sockaddr_in *addr, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)addr, sizeof *addr) == 0)
            return fd;
        int failure = errno;
        close(fd);
        /* The server starts with its machine, as this client does: it may not listen yet. */
        if ((failure != ECONNREFUSED && failure != ETIMEDOUT && failure != EHOSTUNREACH)
            || now_ms() >= deadline) {
            errno = failure;
            return -1;
        }
        usleep(20000);
    }
}

static int client_tcp(struct sockaddr_in *addr, int count, int size, int timeout_ms)
{
    static unsigned char out[4 + MAX_SIZE + 4], in[4 + MAX_SIZE + 4];
    uint32_t total = 0;
    int one = 1;
    int fd = connect_tcp(addr, timeout_ms);
    if (fd < 0) {
        printf("netecho: timeout connecting over tcp (%s)\n", strerror(errno));
        return 3;
    }
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    size_t frame = 4 + (size_t)size + 4;
    for (int i = 0; i < count; i++) {
        put32(out, (uint32_t)size);
        fill(out + 4, (size_t)size, (uint32_t)i);
        uint32_t crc = crc32_of(out + 4, (size_t)size);
        put32(out + 4 + size, crc);
        if (write_full(fd, out, frame) != 0 || read_full(fd, in, frame) != 0) {
            int timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
            printf("netecho: %s at message %d over tcp\n",
                   timed_out ? "timeout" : "connection lost", i);
            return 3;
        }
        if (memcmp(in, out, frame) != 0
            || crc32_of(in + 4, (size_t)size) != get32(in + 4 + size)) {
            printf("netecho: DETECTED mismatch in message %d over tcp\n", i);
            return 2;
        }
        total = crc32_of((unsigned char *)&crc, 4) ^ (total * 31u);
    }
    close(fd);
    printf("netecho: %d messages of %d bytes echoed over tcp, checksum 0x%08x\n", count, size,
           total);
    return 0;
}

static int client_udp(struct sockaddr_in *addr, int count, int size, int timeout_ms)
{
    static unsigned char out[HEADER_BYTES + MAX_SIZE], in[HEADER_BYTES + MAX_SIZE];
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int lost = 0, corrupted = 0;
    uint32_t total = 0;
    if (fd < 0 || connect(fd, (struct sockaddr *)addr, sizeof *addr) != 0) {
        perror("netecho: udp");
        return 1;
    }
    size_t frame = HEADER_BYTES + (size_t)size;
    long long ready_by = now_ms() + READY_MS;
    for (int answered = 0; !answered;) {
        put32(out, PROBE);
        put32(out + 4, crc32_of(out + HEADER_BYTES, 0));
        send(fd, out, HEADER_BYTES, 0);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) > 0) {
            ssize_t n = recv(fd, in, sizeof in, MSG_DONTWAIT);
            answered = n >= HEADER_BYTES && get32(in) == PROBE;
        }
        if (!answered && now_ms() >= ready_by) {
            printf("netecho: timeout reaching the server over udp\n");
            return 3;
        }
    }
    for (int i = 0; i < count; i++) {
        put32(out, (uint32_t)i);
        fill(out + HEADER_BYTES, (size_t)size, (uint32_t)i);
        uint32_t crc = crc32_of(out + HEADER_BYTES, (size_t)size);
        put32(out + 4, crc);
        send(fd, out, frame, 0);
        long long deadline = now_ms() + timeout_ms;
        int answered = 0;
        while (!answered) {
            long long left = deadline - now_ms();
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (left <= 0 || poll(&p, 1, (int)left) <= 0)
                break;
            ssize_t n = recv(fd, in, sizeof in, MSG_DONTWAIT);
            if (n < HEADER_BYTES || get32(in) != (uint32_t)i)
                continue; /* a late reply to an earlier message, or an ICMP error */
            answered = 1;
            if ((size_t)n != frame || memcmp(in, out, frame) != 0)
                corrupted++;
        }
        if (!answered)
            lost++;
        total = crc32_of((unsigned char *)&crc, 4) ^ (total * 31u);
    }
    close(fd);
    if (lost || corrupted) {
        printf("netecho: DETECTED %d of %d messages lost, %d corrupted over udp\n", lost, count,
               corrupted);
        return 1;
    }
    printf("netecho: %d messages of %d bytes echoed over udp, checksum 0x%08x\n", count, size,
           total);
    return 0;
}

int main(int argc, char **argv)
{
    const char *host = NULL;
    int serving = 0, udp = 0, port = DEFAULT_PORT, count = 100, size = 256, timeout_ms = -1;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--serve") == 0)
            serving = 1;
        else if (strcmp(arg, "--udp") == 0)
            udp = 1;
        else if (strcmp(arg, "--connect") == 0 && value)
            host = argv[++i];
        else if (strcmp(arg, "--port") == 0 && value)
            port = atoi(argv[++i]);
        else if (strcmp(arg, "--count") == 0 && value)
            count = atoi(argv[++i]);
        else if (strcmp(arg, "--size") == 0 && value)
            size = atoi(argv[++i]);
        else if (strcmp(arg, "--timeout-ms") == 0 && value)
            timeout_ms = atoi(argv[++i]);
        else
            return usage();
    }
    if (serving == (host != NULL) || port <= 0 || port > 65535 || count < 0 || size < 1
        || size > MAX_SIZE)
        return usage();
    setvbuf(stdout, NULL, _IOLBF, 0);
    crc_init();
    if (serving)
        return serve(port);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (resolve(host, &addr.sin_addr) != 0) {
        fprintf(stderr, "netecho: unknown host %s\n", host);
        return 64;
    }
    if (timeout_ms < 0)
        timeout_ms = udp ? 500 : 10000;
    return udp ? client_udp(&addr, count, size, timeout_ms)
               : client_tcp(&addr, count, size, timeout_ms);
}
