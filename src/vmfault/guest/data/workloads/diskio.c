/*
 * diskio: checksummed 4 KiB blocks written to a raw disk with O_DIRECT, synced, read back.
 *
 *   diskio [--blocks N] [--disk NAME | --device PATH] [--no-verify]
 *
 * The disk is /dev/vda unless --disk names one (the host's name, linked by the agent as
 * /dev/disk/by-id/virtio-NAME) or --device gives a path. Blocks 0..N-1 (default 256) are
 * first read as they are (a digest of what the disk held: a write of an earlier run that
 * survived shows here), then each is written with a header (magic, block number), a
 * deterministic payload and a 64-bit FNV-1a checksum of both in its last 8 bytes; then
 * fsync, then every block is read back and verified.
 *
 * Output (stdout), the same on every fault-free run:
 *   diskio: before: digest 0x...
 *   diskio: N blocks of 4096 bytes written, synced, read back and verified
 * With --no-verify the read-back is not checked but digested, so a silent corruption
 * changes the output:  diskio: after: digest 0x...
 *
 * Errors go to stderr with the block and its first sector (512-byte units):
 *   I/O error: "diskio: I/O error reading block B (sector S): ..." and exit 4;
 *   mismatch:  "diskio: DETECTED mismatch in block B (sector S) at byte K" and exit 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define BLOCK 4096
#define SECTORS_PER_BLOCK (BLOCK / 512)
#define DEFAULT_BLOCKS 256
#define MAGIC 0x4b534944464d56ULL /* "VMFDISK" */
#define EXIT_MISMATCH 3
#define EXIT_IO 4

static void usage(void)
{
    fprintf(stderr, "usage: diskio [--blocks N] [--disk NAME | --device PATH] [--no-verify]\n");
    exit(2);
}

static uint64_t fnv1a(uint64_t hash, const unsigned char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        hash ^= data[i];
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

static void fill_block(unsigned char *buf, unsigned long block)
{
    uint64_t state = 0x9e3779b97f4a7c15ULL ^ (block * 0xbf58476d1ce4e5b9ULL);
    uint64_t header[2] = {MAGIC, block};
    memcpy(buf, header, sizeof header);
    for (size_t i = sizeof header; i < BLOCK - 8; i += 8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        memcpy(buf + i, &state, 8);
    }
    uint64_t sum = fnv1a(0xcbf29ce484222325ULL, buf, BLOCK - 8);
    memcpy(buf + BLOCK - 8, &sum, 8);
}

static void io_error(const char *what, unsigned long block)
{
    fprintf(stderr, "diskio: I/O error %s block %lu (sector %lu): %s\n", what, block,
            block * SECTORS_PER_BLOCK, strerror(errno));
    exit(EXIT_IO);
}

static void transfer(int fd, unsigned char *buf, unsigned long block, int writing)
{
    off_t offset = (off_t)block * BLOCK;
    ssize_t done = writing ? pwrite(fd, buf, BLOCK, offset) : pread(fd, buf, BLOCK, offset);
    if (done < 0)
        io_error(writing ? "writing" : "reading", block);
    if (done != BLOCK) {
        errno = EIO;
        io_error(writing ? "writing (short)" : "reading (short)", block);
    }
}

int main(int argc, char **argv)
{
    unsigned long blocks = DEFAULT_BLOCKS;
    char path[300] = "/dev/vda";
    int verify = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--blocks") == 0 && i + 1 < argc) {
            char *end;
            blocks = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || blocks == 0 || blocks > (1UL << 24))
                usage();
        } else if (strcmp(argv[i], "--disk") == 0 && i + 1 < argc) {
            snprintf(path, sizeof path, "/dev/disk/by-id/virtio-%s", argv[++i]);
        } else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            snprintf(path, sizeof path, "%s", argv[++i]);
        } else if (strcmp(argv[i], "--no-verify") == 0) {
            verify = 0;
        } else {
            usage();
        }
    }
    int fd = open(path, O_RDWR | O_DIRECT);
    if (fd < 0) {
        fprintf(stderr, "diskio: cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) == 0 && size < (uint64_t)blocks * BLOCK) {
        fprintf(stderr, "diskio: %s holds %llu bytes, fewer than %lu blocks\n", path,
                (unsigned long long)size, blocks);
        return 1;
    }
    unsigned char *buf, *expected;
    if (posix_memalign((void **)&buf, BLOCK, BLOCK) != 0
        || posix_memalign((void **)&expected, BLOCK, BLOCK) != 0) {
        fprintf(stderr, "diskio: out of memory\n");
        return 1;
    }

    uint64_t before = 0xcbf29ce484222325ULL;
    for (unsigned long b = 0; b < blocks; b++) {
        transfer(fd, buf, b, 0);
        before = fnv1a(before, buf, BLOCK);
    }
    printf("diskio: before: digest 0x%016llx\n", (unsigned long long)before);
    fflush(stdout);

    for (unsigned long b = 0; b < blocks; b++) {
        fill_block(buf, b);
        transfer(fd, buf, b, 1);
    }
    if (fsync(fd) != 0) {
        fprintf(stderr, "diskio: I/O error on fsync of %s: %s\n", path, strerror(errno));
        return EXIT_IO;
    }

    uint64_t after = 0xcbf29ce484222325ULL;
    for (unsigned long b = 0; b < blocks; b++) {
        transfer(fd, buf, b, 0);
        if (!verify) {
            after = fnv1a(after, buf, BLOCK);
            continue;
        }
        fill_block(expected, b);
        if (memcmp(buf, expected, BLOCK) != 0) {
            size_t k = 0;
            while (k < BLOCK && buf[k] == expected[k])
                k++;
            fprintf(stderr, "diskio: DETECTED mismatch in block %lu (sector %lu) at byte %zu\n", b,
                    b * SECTORS_PER_BLOCK + k / 512, k);
            return EXIT_MISMATCH;
        }
    }
    close(fd);
    if (verify)
        printf("diskio: %lu blocks of %d bytes written, synced, read back and verified\n", blocks,
               BLOCK);
    else
        printf("diskio: after: digest 0x%016llx\n", (unsigned long long)after);
    return 0;
}
