// A Linux user-space program for nested tests: writes N bytes of the same fixed pattern as
// vsock_stream (byte k = (k mod 251) xor (k div 251), truncated to 8 bits) to stdout, so a
// guest can produce data the host recomputes. Usage: pattern N
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: pattern N\n");
        return 2;
    }
    unsigned long n = strtoul(argv[1], NULL, 0);
    for (unsigned long k = 0; k < n; k++) putchar((int)(((k % 251) ^ (k / 251)) & 0xff));
    return fflush(stdout) != 0;
}
