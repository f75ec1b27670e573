// A Linux user-space program for nested tests: connects over AF_VSOCK to the host (CID 2)
// at PORT, streams BYTES bytes of a fixed pattern while reading them back (the host side
// echoes), and checks every byte. Prints one result line:
//   vsock-stream ok bytes=N
//   vsock-stream error: <what>
// and exits 0 only on "ok". Usage: vsock_stream PORT BYTES
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

// Byte k of the stream: periodic with a prime period, so shifted or dropped data shows.
static unsigned char pattern(unsigned long k) { return (unsigned char)((k % 251) ^ (k / 251)); }

static int fail(const char *what) {
    printf("vsock-stream error: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: vsock_stream PORT BYTES\n");
        return 2;
    }
    unsigned long port = strtoul(argv[1], NULL, 0), total = strtoul(argv[2], NULL, 0);
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) return fail("socket(AF_VSOCK)");
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("connect");

    // The writer is a child so that a full send buffer never blocks the reader.
    pid_t writer = fork();
    if (writer < 0) return fail("fork");
    if (writer == 0) {
        unsigned char buf[8192];
        for (unsigned long sent = 0; sent < total;) {
            size_t n = total - sent < sizeof buf ? total - sent : sizeof buf;
            for (size_t i = 0; i < n; i++) buf[i] = pattern(sent + i);
            ssize_t w = write(fd, buf, n);
            if (w <= 0) _exit(1);
            sent += (unsigned long)w;
        }
        _exit(0);
    }
    unsigned char buf[8192];
    unsigned long got = 0;
    while (got < total) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0) return fail("read");
        if (r == 0) {
            printf("vsock-stream error: EOF after %lu of %lu bytes\n", got, total);
            return 1;
        }
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] != pattern(got + (unsigned long)i)) {
                printf("vsock-stream error: byte %lu is %u, expected %u\n", got + (unsigned long)i,
                       buf[i], pattern(got + (unsigned long)i));
                return 1;
            }
        }
        got += (unsigned long)r;
    }
    int status;
    if (waitpid(writer, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("vsock-stream error: the writer failed\n");
        return 1;
    }
    printf("vsock-stream ok bytes=%lu\n", got);
    return 0;
}
