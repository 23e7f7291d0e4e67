/*
 * vmfault guest agent: the guest's /init (PID 1).
 *
 * Kernel command line keys:
 *   vmfault.mode=run|kallsyms|shell   (default run)
 *   vmfault.argv=<hex>                argv strings joined by one NUL byte, lowercase hex
 *   vmfault.after=idle|poweroff       (default idle)
 *   vmfault.tty=1                     the workload's stdin, stdout and stderr are the serial
 *                                     console (a shell for a host script), not pipes
 *   vmfault.ip=A.B.C.D/LEN            configure eth0 with this address (IPv6 off, lo up)
 *   vmfault.hosts=NAME:A.B.C.D,...    written to /etc/hosts (NAME first is this machine)
 *
 * Everything meant for the host leaves on the result channel as frames:
 *   '@' KIND ' ' LENGTH '\n' PAYLOAD
 * with LENGTH the payload size in decimal ASCII. Kinds: hello, log, disk, start, out, err,
 * exit, kallsyms, idle. A `disk` frame names one virtio disk: "NAME DEVICE SECTORS", its
 * name being the serial the host gave it (also linked as /dev/disk/by-id/virtio-NAME).
 *
 * The result channel is the isa-debugcon port 0xe9 on x86-64 and ARM semihosting on
 * aarch64 (SYS_WRITE0 and SYS_WRITEC, routed by QEMU to a chardev): both are one trapping
 * instruction from user space, with no guest driver and no kernel code on the way.
 *
 * PID 1 must never exit (the kernel panics when it does), so every path ends in
 * idle_forever() or a power-off.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <sys/io.h>
#endif
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION "1"
#define DEBUGCON_PORT 0xe9
#define CHUNK_BYTES 4096
#define CMDLINE_BYTES 4096
#define MAX_ARGS 256
#define MODULE_LIST "/etc/vmfault/modules"
#define DISK_MODULE_LIST "/etc/vmfault/modules.disk"
#define DISK_LINKS "/dev/disk/by-id"
#define WORKLOAD_DIR "/w/"
#if defined(__aarch64__)
#define CONSOLE_TTY "/dev/ttyAMA0" /* the virt machine's PL011 */
#else
#define CONSOLE_TTY "/dev/ttyS0"
#endif
#define NIC_NAME "eth0"

static int debugcon_ok;
static char *const child_env[] = {
    "PATH=/bin:/sbin:/usr/bin:/usr/sbin:/w",
    "HOME=/",
    "TERM=linux",
    NULL,
};

/* Breakpoint targets for a host debugger: the host reads their addresses from this ELF. */
__attribute__((noinline, noipa, used)) void vmfault_hook_started(pid_t pid)
{
    __asm__ volatile("" : : "r"(pid) : "memory");
}

__attribute__((noinline, noipa, used)) void vmfault_hook_exited(int status)
{
    __asm__ volatile("" : : "r"(status) : "memory");
}

#if defined(__x86_64__)
static void port_write(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    if (!debugcon_ok || len == 0)
        return;
    __asm__ volatile("rep outsb"
                     : "+S"(p), "+c"(len)
                     : "d"((unsigned short)DEBUGCON_PORT)
                     : "memory");
}

static int channel_open(void)
{
    return ioperm(DEBUGCON_PORT, 1, 1) == 0;
}
#elif defined(__aarch64__)
#define SEMIHOSTING_WRITEC 0x03
#define SEMIHOSTING_WRITE0 0x04

static void semihosting_call(long op, const void *arg)
{
    register long x0 __asm__("x0") = op;
    register const void *x1 __asm__("x1") = arg;
    __asm__ volatile("hlt #0xf000" : "+r"(x0) : "r"(x1) : "memory");
}

/* SYS_WRITE0 sends a NUL-terminated run at once; a NUL byte goes alone with SYS_WRITEC. */
static void port_write(const void *buf, size_t len)
{
    static char run[CHUNK_BYTES + 1];
    const char *p = buf;
    if (!debugcon_ok)
        return;
    while (len > 0) {
        size_t n = 0;
        if (*p == '\0') {
            semihosting_call(SEMIHOSTING_WRITEC, p);
            p++;
            len--;
            continue;
        }
        while (n < len && n < CHUNK_BYTES && p[n] != '\0') {
            run[n] = p[n];
            n++;
        }
        run[n] = '\0';
        semihosting_call(SEMIHOSTING_WRITE0, run);
        p += n;
        len -= n;
    }
}

/* The host always enables semihosting for user space (QEMU -semihosting-config). */
static int channel_open(void)
{
    return 1;
}
#else
#error "the agent supports x86-64 and aarch64 guests"
#endif

static void send_frame(const char *kind, const void *payload, size_t len)
{
    char head[64];
    int n = snprintf(head, sizeof head, "@%s %zu\n", kind, len);
    port_write(head, (size_t)n);
    port_write(payload, len);
}

static void send_text(const char *kind, const char *text)
{
    send_frame(kind, text, strlen(text));
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += n;
        len -= (size_t)n;
    }
}

static void console_print(const char *text)
{
    write_all(STDOUT_FILENO, text, strlen(text));
}

/* A diagnostic: a `log` frame for the host and a console line for a human. */
static void agent_log(const char *fmt, ...)
{
    char msg[512];
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    send_text("log", msg);
    snprintf(line, sizeof line, "vmfault-agent: %s\n", msg);
    console_print(line);
}

static void on_sigchld(int signo)
{
    (void)signo;
}

static void ensure_console(void)
{
    if (fcntl(STDOUT_FILENO, F_GETFD) != -1)
        return;
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        return;
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
}

static void mount_filesystems(void)
{
    static const struct {
        const char *source, *target, *type;
    } mounts[] = {
        {"proc", "/proc", "proc"},
        {"sysfs", "/sys", "sysfs"},
        {"devtmpfs", "/dev", "devtmpfs"},
        {"tmpfs", "/tmp", "tmpfs"},
    };
    for (size_t i = 0; i < sizeof mounts / sizeof mounts[0]; i++) {
        mkdir(mounts[i].target, 0755);
        if (mount(mounts[i].source, mounts[i].target, mounts[i].type, 0, NULL) != 0
            && errno != EBUSY) {
            char line[160];
            snprintf(line, sizeof line, "vmfault-agent: mount %s: %s\n", mounts[i].target,
                     strerror(errno));
            console_print(line);
        }
    }
}

static void load_modules(const char *list_path)
{
    FILE *list = fopen(list_path, "r");
    char path[512];
    int loaded = 0, total = 0;
    if (!list)
        return;
    while (fgets(path, sizeof path, list)) {
        path[strcspn(path, "\r\n")] = '\0';
        if (path[0] == '\0' || path[0] == '#')
            continue;
        total++;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            agent_log("module %s: %s", path, strerror(errno));
            continue;
        }
        if (syscall(SYS_finit_module, fd, "", 0) == 0 || errno == EEXIST)
            loaded++;
        else
            agent_log("module %s: %s", path, strerror(errno));
        close(fd);
    }
    fclose(list);
    agent_log("modules: %d of %d loaded", loaded, total);
}

static size_t read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t used = 0;
    if (fd < 0)
        return 0;
    while (used + 1 < size) {
        ssize_t n = read(fd, buf + used, size - 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        used += (size_t)n;
    }
    close(fd);
    buf[used] = '\0';
    return used;
}

/*
 * Report every virtio disk (vda, vdb, ...) with the serial the host gave it, and link it as
 * /dev/disk/by-id/virtio-SERIAL as udev would. Returns how many there are.
 */
static int report_disks(void)
{
    DIR *dir = opendir("/sys/block");
    struct dirent *entry;
    int count = 0;
    if (!dir)
        return 0;
    mkdir("/dev/disk", 0755);
    mkdir(DISK_LINKS, 0755);
    while ((entry = readdir(dir)) != NULL) {
        char path[300], serial[64], sectors[32], link[400], target[300], frame[200];
        if (strncmp(entry->d_name, "vd", 2) != 0 || strlen(entry->d_name) > 32)
            continue;
        snprintf(path, sizeof path, "/sys/block/%s/serial", entry->d_name);
        if (read_file(path, serial, sizeof serial) == 0)
            serial[0] = '\0';
        serial[strcspn(serial, "\r\n ")] = '\0';
        snprintf(path, sizeof path, "/sys/block/%s/size", entry->d_name);
        if (read_file(path, sectors, sizeof sectors) == 0)
            snprintf(sectors, sizeof sectors, "0");
        sectors[strcspn(sectors, "\r\n ")] = '\0';
        if (serial[0] && !strchr(serial, '/')) {
            snprintf(link, sizeof link, DISK_LINKS "/virtio-%s", serial);
            snprintf(target, sizeof target, "../../%s", entry->d_name);
            unlink(link);
            if (symlink(target, link) != 0)
                agent_log("%s: %s", link, strerror(errno));
        }
        snprintf(frame, sizeof frame, "%s %s %s", serial[0] ? serial : "-", entry->d_name,
                 sectors);
        send_text("disk", frame);
        count++;
    }
    closedir(dir);
    return count;
}

/* The value of `key=` on the kernel command line, copied into out; 0 when absent. */
static int cmdline_value(const char *cmdline, const char *key, char *out, size_t size)
{
    size_t keylen = strlen(key);
    const char *p = cmdline;
    int found = 0;
    while (*p) {
        while (*p == ' ' || *p == '\n' || *p == '\t')
            p++;
        const char *end = p + strcspn(p, " \n\t");
        if ((size_t)(end - p) > keylen && strncmp(p, key, keylen) == 0 && p[keylen] == '=') {
            size_t n = (size_t)(end - p) - keylen - 1;
            if (n >= size)
                n = size - 1;
            memcpy(out, p + keylen + 1, n);
            out[n] = '\0';
            found = 1;
        }
        p = end;
    }
    return found;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes hex into buf (NUL-terminated strings) and fills argv; returns argc or -1. */
static int decode_argv(const char *hex, char *buf, size_t size, char **argv, int max_args)
{
    size_t len = strlen(hex);
    int argc = 0;
    if (len == 0 || len % 2 != 0 || len / 2 + 1 > size)
        return -1;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        buf[i] = (char)(hi << 4 | lo);
    }
    buf[len / 2] = '\0';
    for (size_t i = 0; i <= len / 2;) {
        if (argc >= max_args - 1)
            return -1;
        argv[argc++] = buf + i;
        i += strlen(buf + i) + 1;
    }
    argv[argc] = NULL;
    return argv[0][0] ? argc : -1;
}

static long long elapsed_ns(const struct timespec *t0, const struct timespec *t1)
{
    return (long long)(t1->tv_sec - t0->tv_sec) * 1000000000LL + (t1->tv_nsec - t0->tv_nsec);
}

static void reset_child_signals(void)
{
    sigset_t none;
    sigemptyset(&none);
    signal(SIGCHLD, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Makes the console the calling process's controlling terminal and its stdin, stdout and
 * stderr (it must lead a new session). */
static void take_console(void)
{
    setsid();
    int fd = open(CONSOLE_TTY, O_RDWR);
    if (fd < 0)
        fd = open("/dev/console", O_RDWR);
    if (fd < 0)
        return;
    ioctl(fd, TIOCSCTTY, 1);
    for (int i = 0; i < 3; i++)
        dup2(fd, i);
    if (fd > 2)
        close(fd);
}

static void send_exit(int status, const struct timespec *t0, const struct timespec *t1);

/* The workload on the console (vmfault.tty=1): its output goes to the console only, and
 * the host answers its prompts there. */
static void run_on_console(char **argv, const char *path)
{
    struct timespec t0, t1;
    int status = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        agent_log("fork: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        reset_child_signals();
        take_console();
        execve(path, argv, child_env);
        dprintf(STDERR_FILENO, "vmfault-agent: cannot execute %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    vmfault_hook_started(pid);
    char pidtext[32];
    snprintf(pidtext, sizeof pidtext, "%d", (int)pid);
    send_text("start", pidtext);
    for (;;) {
        pid_t got = waitpid(pid, &status, 0);
        if (got == pid)
            break;
        if (got < 0 && errno != EINTR) {
            agent_log("waitpid: %s", strerror(errno));
            break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    vmfault_hook_exited(status);
    send_exit(status, &t0, &t1);
}

static void run_workload(char **argv, int on_console)
{
    char path[512];
    int out[2], err[2];
    struct timespec t0, t1;
    int status = 0;

    if (strchr(argv[0], '/'))
        snprintf(path, sizeof path, "%s", argv[0]);
    else
        snprintf(path, sizeof path, WORKLOAD_DIR "%s", argv[0]);
    if (on_console) {
        run_on_console(argv, path);
        return;
    }
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
        agent_log("pipe: %s", strerror(errno));
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        agent_log("fork: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        reset_child_signals();
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        dup2(err[1], STDERR_FILENO);
        execve(path, argv, child_env);
        dprintf(STDERR_FILENO, "vmfault-agent: cannot execute %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    vmfault_hook_started(pid);
    char pidtext[32];
    snprintf(pidtext, sizeof pidtext, "%d", (int)pid);
    send_text("start", pidtext);
    close(out[1]);
    close(err[1]);

    /*
     * SIGCHLD stays blocked except inside ppoll(), so the workload's exit always interrupts
     * the wait. Once it is reaped, the pipes are drained without blocking: a background
     * process that inherited them must not keep the agent from reporting the exit.
     */
    sigset_t chld, waiting;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &waiting);
    sigdelset(&waiting, SIGCHLD);

    struct pollfd fds[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
    static const char *const kinds[2] = {"out", "err"};
    static char chunk[CHUNK_BYTES];
    const struct timespec no_wait = {0, 0};
    int open_fds = 2, reaped = 0;
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    while (open_fds > 0) {
        if (!reaped && waitpid(pid, &status, WNOHANG) == pid) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            reaped = 1;
        }
        int ready = ppoll(fds, 2, reaped ? &no_wait : NULL, &waiting);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            agent_log("poll: %s", strerror(errno));
            break;
        }
        if (ready == 0)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || fds[i].revents == 0)
                continue;
            ssize_t n = read(fds[i].fd, chunk, sizeof chunk);
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            write_all(i == 0 ? STDOUT_FILENO : STDERR_FILENO, chunk, (size_t)n);
            send_frame(kinds[i], chunk, (size_t)n);
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    while (!reaped) {
        if (waitpid(pid, &status, 0) == pid) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            reaped = 1;
        } else if (errno != EINTR) {
            agent_log("waitpid: %s", strerror(errno));
            clock_gettime(CLOCK_MONOTONIC, &t1);
            break;
        }
    }
    sigprocmask(SIG_UNBLOCK, &chld, NULL);
    vmfault_hook_exited(status);
    send_exit(status, &t0, &t1);
}

static void send_exit(int status, const struct timespec *t0, const struct timespec *t1)
{
    char result[96];
    if (WIFSIGNALED(status))
        snprintf(result, sizeof result, "signaled %d %lld", WTERMSIG(status), elapsed_ns(t0, t1));
    else
        snprintf(result, sizeof result, "exited %d %lld", WEXITSTATUS(status), elapsed_ns(t0, t1));
    send_text("exit", result);
}

static void write_sysctl(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        write_all(fd, value, strlen(value));
        close(fd);
    } else {
        agent_log("%s: %s", path, strerror(errno));
    }
}

static void dump_kallsyms(void)
{
    static char chunk[CHUNK_BYTES];
    write_sysctl("/proc/sys/kernel/kptr_restrict", "0\n");
    int fd = open("/proc/kallsyms", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        agent_log("/proc/kallsyms: %s", strerror(errno));
        send_text("exit", "exited 1 0");
        return;
    }
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            agent_log("/proc/kallsyms: %s", strerror(errno));
            close(fd);
            send_text("exit", "exited 1 0");
            return;
        }
        if (n == 0)
            break;
        send_frame("kallsyms", chunk, (size_t)n);
    }
    close(fd);
    /* The physical ranges of the kernel image ("Kernel code", "Kernel data"): a kernel
     * without data symbols in kallsyms (arm64's) still shows where its data lies. */
    size_t used = read_file("/proc/iomem", chunk, sizeof chunk);
    send_frame("kallsyms", chunk, used);
    send_text("exit", "exited 0 0");
}

static pid_t spawn(char *const argv[], int new_session)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    reset_child_signals();
    if (new_session)
        take_console();
    execve(argv[0], argv, child_env);
    dprintf(STDERR_FILENO, "vmfault-agent: cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Waits for pid, reaping any other child on the way. */
static int wait_for(pid_t pid)
{
    int status = 0;
    for (;;) {
        pid_t got = waitpid(-1, &status, 0);
        if (got == pid)
            return status;
        if (got < 0 && errno != EINTR)
            return -1;
    }
}

static void power_off(void)
{
    sync();
    reboot(RB_POWER_OFF);
    agent_log("poweroff: %s", strerror(errno));
}

static void install_applets(void);

static void run_shell(int poweroff_after)
{
    char *shell[] = {"/bin/sh", NULL};
    pid_t pid;
    install_applets();
    for (;;) {
        pid = spawn(shell, 1);
        if (pid < 0) {
            agent_log("fork: %s", strerror(errno));
            return;
        }
        wait_for(pid);
        if (poweroff_after) {
            power_off();
            return;
        }
        sleep(1);
    }
}

static int set_address(int sock, unsigned long request, const char *ifname, struct in_addr addr)
{
    struct ifreq ifr;
    struct sockaddr_in sin;
    memset(&ifr, 0, sizeof ifr);
    memset(&sin, 0, sizeof sin);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    sin.sin_family = AF_INET;
    sin.sin_addr = addr;
    memcpy(&ifr.ifr_addr, &sin, sizeof sin);
    return ioctl(sock, request, &ifr);
}

static int bring_up(int sock, const char *ifname)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0)
        return -1;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    return ioctl(sock, SIOCSIFFLAGS, &ifr);
}

/* /etc/hosts from "NAME:ADDRESS,NAME:ADDRESS,..."; the first name is this machine's. */
static void write_hosts(const char *list)
{
    char copy[CMDLINE_BYTES];
    char text[CMDLINE_BYTES + 64];
    size_t used = 0;
    int first = 1;
    snprintf(copy, sizeof copy, "%s", list);
    used += (size_t)snprintf(text, sizeof text, "127.0.0.1 localhost\n");
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        if (!colon)
            continue;
        *colon = '\0';
        if (used < sizeof text)
            used += (size_t)snprintf(text + used, sizeof text - used, "%s %s\n", colon + 1, item);
        if (first) {
            sethostname(item, strlen(item));
            first = 0;
        }
    }
    int fd = open("/etc/hosts", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        agent_log("/etc/hosts: %s", strerror(errno));
        return;
    }
    write_all(fd, text, used < sizeof text ? used : sizeof text - 1);
    close(fd);
}

/* The machine's place on vmfault's network: eth0 at vmfault.ip, lo up, IPv6 off (the
 * network is IPv4 and static: no router solicitations or address probes on the wire). */
static void setup_network(const char *cmdline)
{
    char spec[64], hosts[CMDLINE_BYTES];
    if (!cmdline_value(cmdline, "vmfault.ip", spec, sizeof spec))
        return;
    write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1\n");
    write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1\n");
    char *slash = strchr(spec, '/');
    int prefix = 24;
    if (slash) {
        *slash = '\0';
        prefix = atoi(slash + 1);
    }
    struct in_addr addr, mask;
    if (inet_pton(AF_INET, spec, &addr) != 1 || prefix < 1 || prefix > 32) {
        agent_log("malformed vmfault.ip");
        return;
    }
    mask.s_addr = htonl(prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix));
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        agent_log("socket: %s", strerror(errno));
        return;
    }
    if (bring_up(sock, "lo") != 0)
        agent_log("lo: %s", strerror(errno));
    if (set_address(sock, SIOCSIFADDR, NIC_NAME, addr) != 0
        || set_address(sock, SIOCSIFNETMASK, NIC_NAME, mask) != 0
        || bring_up(sock, NIC_NAME) != 0)
        agent_log(NIC_NAME ": %s", strerror(errno));
    close(sock);
    if (cmdline_value(cmdline, "vmfault.hosts", hosts, sizeof hosts))
        write_hosts(hosts);
    agent_log("network: " NIC_NAME " %s/%d", spec, prefix);
}

static void install_applets(void)
{
    char *install[] = {"/bin/busybox", "--install", "-s", "/bin", NULL};
    pid_t pid = spawn(install, 0);
    if (pid > 0)
        wait_for(pid);
}

static __attribute__((noreturn)) void idle_forever(void)
{
    sigset_t chld, none;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigemptyset(&none);
    send_frame("idle", "", 0);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        sigsuspend(&none);
    }
}

int main(void)
{
    static char cmdline[CMDLINE_BYTES];
    static char hex[CMDLINE_BYTES];
    static char argbuf[CMDLINE_BYTES];
    char mode[32] = "run", after[32] = "idle";
    char *argv[MAX_ARGS];
    struct sigaction sa;
    struct utsname uts;
    char hello[256];

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);

    mount_filesystems();
    ensure_console();
    if (channel_open())
        debugcon_ok = 1;
    else
        console_print("vmfault-agent: ioperm(0xe9) failed: no host channel\n");

    uname(&uts);
    snprintf(hello, sizeof hello, "vmfault-agent " PROTOCOL_VERSION " %s", uts.release);
    send_text("hello", hello);

    load_modules(MODULE_LIST);
    if (report_disks() > 0)
        load_modules(DISK_MODULE_LIST); /* file systems, for workloads that make one */
    /* Boot quietly, then let every kernel message through: user-level crash reports such
     * as "segfault at ..." are KERN_INFO and are evidence for classifying an outcome. */
    write_sysctl("/proc/sys/kernel/printk", "7\n");
    /* The kernel's report of a user fault (x86-64 has it on by default, arm64 off). */
    write_sysctl("/proc/sys/debug/exception-trace", "1\n");
    read_file("/proc/cmdline", cmdline, sizeof cmdline);
    cmdline_value(cmdline, "vmfault.mode", mode, sizeof mode);
    cmdline_value(cmdline, "vmfault.after", after, sizeof after);
    int poweroff_after = strcmp(after, "poweroff") == 0;
    char tty[8] = "0";
    cmdline_value(cmdline, "vmfault.tty", tty, sizeof tty);
    int on_console = strcmp(tty, "1") == 0;
    char ip[64];
    int networked = cmdline_value(cmdline, "vmfault.ip", ip, sizeof ip);
    setup_network(cmdline);
    if (!poweroff_after && strcmp(after, "idle") != 0)
        agent_log("unknown vmfault.after=%s, idling", after);
    console_print("vmfault-agent: ready\n");

    if (strcmp(mode, "run") == 0) {
        if (!cmdline_value(cmdline, "vmfault.argv", hex, sizeof hex))
            agent_log("no vmfault.argv on the kernel command line");
        else if (decode_argv(hex, argbuf, sizeof argbuf, argv, MAX_ARGS) < 0)
            agent_log("malformed vmfault.argv");
        else {
            if (on_console || networked)
                install_applets(); /* ping, nc, wget, httpd, ... on the PATH */
            run_workload(argv, on_console);
        }
    } else if (strcmp(mode, "kallsyms") == 0) {
        dump_kallsyms();
    } else if (strcmp(mode, "shell") == 0) {
        run_shell(poweroff_after);
    } else {
        agent_log("unknown vmfault.mode=%s", mode);
    }
    if (poweroff_after)
        power_off();
    idle_forever();
}
