/*
 * matmul: double-precision N x N matrix multiply C = A * B on deterministic inputs.
 *
 *   matmul [--size N]
 *
 * Prints "matmul: n=<N> checksum=<weighted sum of C, %.17g>" and exits 0. The default
 * N = 176 takes about 65 ms under QEMU TCG.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_SIZE 176

static void usage(void)
{
    fprintf(stderr, "usage: matmul [--size N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    long n = DEFAULT_SIZE;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
            char *end;
            n = strtol(argv[++i], &end, 10);
            if (*end != '\0' || n < 1 || n > 4096)
                usage();
        } else {
            usage();
        }
    }
    double *a = malloc((size_t)(n * n) * sizeof *a);
    double *b = malloc((size_t)(n * n) * sizeof *b);
    double *c = calloc((size_t)(n * n), sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "matmul: out of memory\n");
        return 1;
    }
    for (long i = 0; i < n; i++) {
        for (long j = 0; j < n; j++) {
            a[i * n + j] = (double)((i * 7 + j * 3) % 17) / 16.0 - 0.5;
            b[i * n + j] = (double)((i * 5 + j * 11) % 13) / 12.0 + 0.25;
        }
    }
    for (long i = 0; i < n; i++)
        for (long k = 0; k < n; k++) {
            double aik = a[i * n + k];
            for (long j = 0; j < n; j++)
                c[i * n + j] += aik * b[k * n + j];
        }
    double sum = 0.0;
    for (long i = 0; i < n * n; i++)
        sum += c[i] * (double)(i % 7 + 1);
    printf("matmul: n=%ld checksum=%.17g\n", n, sum);
    return 0;
}
