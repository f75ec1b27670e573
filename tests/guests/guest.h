/* Shared helpers for Veil's freestanding test guests: serial output, number printing and
 * ending the VM. The guests run in 64-bit long mode, identity-mapped, with no libc. */
#ifndef VEIL_TEST_GUEST_H
#define VEIL_TEST_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3f8

static inline void outb(u16 port, u8 value) { __asm__ volatile("outb %0, %1" ::"a"(value), "Nd"(port)); }
static inline u8 inb(u16 port) {
    u8 value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void putc(char c) { outb(COM1, (u8)c); }
static inline void puts(const char *s) { while (*s) putc(*s++); }

static inline void put_hex(u64 v) {
    puts("0x");
    int started = 0;
    for (int shift = 60; shift >= 0; shift -= 4) {
        u8 nibble = (v >> shift) & 0xf;
        if (nibble || started || shift == 0) {
            putc("0123456789abcdef"[nibble]);
            started = 1;
        }
    }
}

static inline void put_dec(u64 v) {
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do { buf[--i] = '0' + v % 10; v /= 10; } while (v);
    puts(&buf[i]);
}

static inline u64 rdmsr(u32 msr) {
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

/* The number of enabled processors the MP table lists (0 without a table). The MP floating
 * pointer sits in the first KiB of the EBDA (0x9fc00). */
static inline u32 mptable_cpus(void) {
    for (u64 p = 0x9fc00; p < 0xa0000; p += 16) {
        const u8 *mpf = (const u8 *)p;
        if (mpf[0] == '_' && mpf[1] == 'M' && mpf[2] == 'P' && mpf[3] == '_') {
            const u8 *table = (const u8 *)(u64)(*(const u32 *)(mpf + 4));
            u16 count = *(const u16 *)(table + 34);
            const u8 *entry = table + 44;
            u32 cpus = 0;
            for (u16 i = 0; i < count; i++) {
                if (entry[0] == 0) {
                    cpus += entry[3] & 1;
                    entry += 20;
                } else {
                    entry += 8;
                }
            }
            return cpus;
        }
    }
    return 0;
}

/* Asks the VMM to end the VM: command 0xfe to the i8042 controller. */
static inline __attribute__((noreturn)) void reset(void) {
    for (;;) {
        outb(0x64, 0xfe);
        __asm__ volatile("hlt");
    }
}

#endif
