/*
 * crc32: CRC-32 (IEEE 802.3, reflected, polynomial 0xedb88320) over a deterministic buffer.
 *
 *   crc32 [--size BYTES]
 *
 * Prints "crc32: 0x<8 hex digits>" and exits 0.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_SIZE (4 * 1024 * 1024)

static uint32_t table[256];

static void usage(void)
{
    fprintf(stderr, "usage: crc32 [--size BYTES]\n");
    exit(2);
}

static void make_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xedb88320U ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
}

static uint32_t crc32(const unsigned char *buf, size_t len)
{
    uint32_t c = 0xffffffffU;
    for (size_t i = 0; i < len; i++)
        c = table[(c ^ buf[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffU;
}

int main(int argc, char **argv)
{
    unsigned long size = DEFAULT_SIZE;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
            char *end;
            size = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || size == 0 || size > (1UL << 28))
                usage();
        } else {
            usage();
        }
    }
    unsigned char *buf = malloc(size);
    if (!buf) {
        fprintf(stderr, "crc32: out of memory\n");
        return 1;
    }
    uint32_t state = 0x12345678U;
    for (unsigned long i = 0; i < size; i++) {
        state = state * 1103515245U + 12345U;
        buf[i] = (unsigned char)(state >> 16);
    }
    make_table();
    if (crc32((const unsigned char *)"123456789", 9) != 0xcbf43926U) {
        fprintf(stderr, "crc32: self-test failed\n");
        return 1;
    }
    printf("crc32: 0x%08x\n", crc32(buf, size));
    return 0;
}
