/*
 * checksum: folds a checksum over an LCG-filled array for several rounds.
 *
 *   checksum [--rounds N] [--size N] [--self-check]
 *
 * Prints "checksum: 0x<16 hex digits>" and exits 0. With --self-check a shadow copy of the
 * array is compared after every round; a mismatch prints
 * "checksum: DETECTED mismatch at index <i>" on stderr and exits 3.
 *
 * The defaults (56 rounds over 131072 values, 1 MiB) keep one run near 40-60 ms under QEMU TCG,
 * short enough for many experiments per second.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_ROUNDS 16
#define DEFAULT_SIZE 131072

/* Static arrays, so fault targets can name them: memory:@checksum_values. Pages past the
 * chosen --size are never touched and so never mapped. */
#define MAX_SIZE (1UL << 20)
uint64_t checksum_values[MAX_SIZE];
uint64_t checksum_shadow[MAX_SIZE];
static uint64_t *data = checksum_values;
static uint64_t *shadow = checksum_shadow;

static void usage(void)
{
    fprintf(stderr, "usage: checksum [--rounds N] [--size N] [--self-check]\n");
    exit(2);
}

static unsigned long parse_count(const char *text)
{
    char *end;
    unsigned long value = strtoul(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value == 0 || value > (1UL << 26))
        usage();
    return value;
}

/* Not inlined, so experiments can trigger on them: exec:fold#3 is the third round. */
__attribute__((noinline)) void fill(uint64_t *array, size_t size)
{
    uint64_t state = 0x853c49e6748fea9bULL;
    for (size_t i = 0; i < size; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        array[i] = state ^ (state >> 29);
    }
}

__attribute__((noinline)) uint64_t fold(const uint64_t *array, size_t size, uint64_t sum,
                                       unsigned round)
{
    for (size_t i = 0; i < size; i++) {
        uint64_t x = array[i] + round;
        sum ^= x;
        sum = (sum << 13) | (sum >> 51);
        sum *= 0x9e3779b97f4a7c15ULL;
        sum ^= x >> 17;
        sum = (sum << 29) | (sum >> 35);
        sum *= 0xbf58476d1ce4e5b9ULL;
    }
    return sum;
}

static long find_mismatch(size_t size)
{
    uint64_t difference = 0;
    for (size_t i = 0; i < size; i++)
        difference |= data[i] ^ shadow[i];
    if (difference == 0)
        return -1;
    for (size_t i = 0; i < size; i++)
        if (data[i] != shadow[i])
            return (long)i;
    return -1;
}

int main(int argc, char **argv)
{
    unsigned long rounds = DEFAULT_ROUNDS, size = DEFAULT_SIZE;
    int self_check = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = parse_count(argv[++i]);
        else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
            size = parse_count(argv[++i]);
        else if (strcmp(argv[i], "--self-check") == 0)
            self_check = 1;
        else
            usage();
    }
    if (size > MAX_SIZE) {
        fprintf(stderr, "checksum: --size is at most %lu\n", MAX_SIZE);
        return 2;
    }
    fill(data, size);
    if (self_check)
        memcpy(shadow, data, size * sizeof *data);

    uint64_t sum = 0xcbf29ce484222325ULL;
    for (unsigned long r = 0; r < rounds; r++) {
        sum = fold(data, size, sum, (unsigned)r);
        if (self_check) {
            long bad = find_mismatch(size);
            if (bad >= 0) {
                fprintf(stderr, "checksum: DETECTED mismatch at index %ld\n", bad);
                return 3;
            }
        }
    }
    printf("checksum: 0x%016" PRIx64 "\n", sum);
    return 0;
}
