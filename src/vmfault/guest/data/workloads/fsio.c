/*
 * fsio: files through an ext2 file system the guest makes itself, synced, read back.
 *
 *   fsio [--files N] [--size BYTES] [--disk NAME | --device PATH] [--no-verify]
 *
 * Makes an ext2 file system on the disk (/dev/vda unless --disk NAME, linked by the agent
 * as /dev/disk/by-id/virtio-NAME, or --device PATH) with busybox mke2fs, mounts it with
 * errors=remount-ro (the kernel's own error handling: a metadata error turns the file
 * system read-only), writes N files (default 8) of BYTES each (default 32768) of
 * deterministic content, fsyncs each, syncs, drops the page cache so that the reads go
 * to the disk, reads every file back and verifies it, and unmounts.
 *
 * Output (stdout), the same on every fault-free run:
 *   fsio: N files of BYTES bytes written, synced, read back and verified
 * With --no-verify the files are digested instead:  fsio: after: digest 0x...
 * Errors go to stderr: an I/O error (or a file system gone read-only) names the file and
 * the call, exit 4; "fsio: DETECTED mismatch in fileI at byte K", exit 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MOUNT_POINT "/mnt/fsio"
#define CHUNK 4096
#define EXIT_MISMATCH 3
#define EXIT_IO 4

static void usage(void)
{
    fprintf(stderr, "usage: fsio [--files N] [--size BYTES] [--disk NAME | --device PATH] "
                    "[--no-verify]\n");
    exit(2);
}

static void fail(const char *what, const char *name)
{
    fprintf(stderr, "fsio: I/O error %s %s: %s\n", what, name, strerror(errno));
    exit(EXIT_IO);
}

static void fill(unsigned char *buf, size_t len, unsigned long file, size_t offset)
{
    for (size_t i = 0; i < len; i++) {
        uint64_t x = (offset + i) * 0x9e3779b97f4a7c15ULL ^ (file + 1) * 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 29;
        buf[i] = (unsigned char)(x ^ x >> 17);
    }
}

static int make_fs(const char *device)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, STDOUT_FILENO);
        execl("/bin/busybox", "mke2fs", "-F", device, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv)
{
    unsigned long files = 8, size = 32768;
    char device[300] = "/dev/vda";
    int verify = 1;
    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "--files") == 0 && i + 1 < argc) {
            files = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || files == 0 || files > 10000)
                usage();
        } else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
            size = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || size == 0 || size > (1UL << 26))
                usage();
        } else if (strcmp(argv[i], "--disk") == 0 && i + 1 < argc) {
            snprintf(device, sizeof device, "/dev/disk/by-id/virtio-%s", argv[++i]);
        } else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            snprintf(device, sizeof device, "%s", argv[++i]);
        } else if (strcmp(argv[i], "--no-verify") == 0) {
            verify = 0;
        } else {
            usage();
        }
    }
    int made = make_fs(device);
    if (made != 0) {
        fprintf(stderr, "fsio: mke2fs %s failed (status %d)\n", device, made);
        return EXIT_IO;
    }
    mkdir("/mnt", 0755);
    mkdir(MOUNT_POINT, 0755);
    if (mount(device, MOUNT_POINT, "ext2", 0, "errors=remount-ro") != 0)
        fail("mounting", device);

    unsigned char buf[CHUNK], want[CHUNK];
    char name[64];
    for (unsigned long f = 0; f < files; f++) {
        snprintf(name, sizeof name, MOUNT_POINT "/file%lu", f);
        int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            fail("creating", name);
        for (size_t done = 0; done < size; done += CHUNK) {
            size_t len = size - done < CHUNK ? size - done : CHUNK;
            fill(buf, len, f, done);
            ssize_t n = write(fd, buf, len);
            if (n < 0)
                fail("writing", name);
            if ((size_t)n != len) {
                errno = ENOSPC;
                fail("writing (short)", name);
            }
        }
        if (fsync(fd) != 0)
            fail("syncing", name);
        if (close(fd) != 0)
            fail("closing", name);
    }
    sync();
    int drop = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (drop < 0 || write(drop, "3\n", 2) != 2)
        fail("dropping the page cache of", device);
    close(drop);

    uint64_t digest = 0xcbf29ce484222325ULL;
    for (unsigned long f = 0; f < files; f++) {
        snprintf(name, sizeof name, MOUNT_POINT "/file%lu", f);
        int fd = open(name, O_RDONLY);
        if (fd < 0)
            fail("opening", name);
        size_t done = 0;
        for (;;) {
            ssize_t n = read(fd, buf, CHUNK);
            if (n < 0)
                fail("reading", name);
            if (n == 0)
                break;
            if (verify) {
                fill(want, (size_t)n, f, done);
                for (ssize_t k = 0; k < n; k++)
                    if (buf[k] != want[k] || done + (size_t)k >= size) {
                        fprintf(stderr, "fsio: DETECTED mismatch in file%lu at byte %zu\n", f,
                                done + (size_t)k);
                        return EXIT_MISMATCH;
                    }
            }
            for (ssize_t k = 0; k < n; k++) {
                digest ^= buf[k];
                digest *= 0x100000001b3ULL;
            }
            done += (size_t)n;
        }
        close(fd);
        if (verify && done != size) {
            fprintf(stderr, "fsio: DETECTED mismatch in file%lu: %zu bytes instead of %lu\n", f,
                    done, size);
            return EXIT_MISMATCH;
        }
    }
    if (umount(MOUNT_POINT) != 0)
        fail("unmounting", MOUNT_POINT);
    if (verify)
        printf("fsio: %lu files of %lu bytes written, synced, read back and verified\n", files,
               size);
    else
        printf("fsio: after: digest 0x%016llx\n", (unsigned long long)digest);
    return 0;
}
