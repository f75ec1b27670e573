/* A minimal virtio-mmio (version 2, "modern") driver for Veil's freestanding test guests:
 * device discovery from the kernel command line, feature negotiation, split virtqueues in
 * guest memory, notification and polling of the used ring. No interrupts: the guests poll
 * and acknowledge InterruptStatus as a real driver's handler would.
 *
 * Every wait is bounded (rdtsc based) so that a device that never answers turns into a
 * reported timeout instead of a hung VM. Header-only: each guest is one C file. */
#ifndef VEIL_VIRTIO_H
#define VEIL_VIRTIO_H

#include "guest.h"

/* virtio-mmio registers (virtio 1.2, 4.2.2). */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976 /* "virt" */

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

#define VIRTIO_F_VERSION_1 (1UL << 32)

#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_VSOCK 19

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

/* Most devices a guest looks at, and the largest queue it builds. */
#define VIRTIO_MAX_DEVICES 8
#define VQ_MAX_SIZE 64

/* How long any wait for the device may take: about 10 s on a 2-4 GHz TSC. Generous, because
 * the device runs on the VMM's event-loop thread, which shares 2 cores with other builds. */
#define VIRTIO_TIMEOUT_CYCLES 30000000000UL

static inline u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

/* x86 is TSO; the fence orders our ring stores before the notify's MMIO store, and keeps the
 * compiler from caching ring fields across polls. */
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline void fill_bytes(void *dst, u8 value, u64 n);
static inline void copy_bytes(void *dst, const void *src, u64 n);

/* gcc may emit calls to these for struct copies and zeroing. */
static inline void *memset(void *dst, int c, u64 n) {
    fill_bytes(dst, (u8)c, n);
    return dst;
}

static inline void *memcpy(void *dst, const void *src, u64 n) {
    copy_bytes(dst, src, n);
    return dst;
}

/* Guest code runs very slowly on this host's software KVM (measured: a register-only loop
 * of 1M iterations took about 10 s), and string instructions go through it one element at a
 * time but far cheaper than a loop. So bulk data is filled, copied and compared with
 * `rep stos`/`rep movs`/`repe cmps`, 8 bytes per element where possible. */
static inline void fill_bytes(void *dst, u8 value, u64 n) {
    __asm__ volatile("rep stosb" : "+D"(dst), "+c"(n) : "a"(value) : "memory");
}

/* Forward copy, byte by byte semantics: an overlapping copy to dst = src + p repeats the
 * first p bytes, which is how periodic patterns are built. */
static inline void copy_bytes(void *dst, const void *src, u64 n) {
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

/* Whether the n bytes at a and b are equal. */
static inline int same_bytes(const void *a, const void *b, u64 n) {
    u64 q = n / 8, r = n % 8;
    u8 eq = 1;
    if (q) __asm__ volatile("repe cmpsq; sete %0" : "=q"(eq), "+S"(a), "+D"(b), "+c"(q) : : "memory", "cc");
    if (!eq) return 0;
    if (r) __asm__ volatile("repe cmpsb; sete %0" : "=q"(eq), "+S"(a), "+D"(b), "+c"(r) : : "memory", "cc");
    return eq;
}

/* Keeps every writable object off the pages that hold code. guest.ld packs .data and .bss
 * right behind .text/.rodata, and on this host's software KVM each store to a page that also
 * holds code traps (it is handled as possibly self-modifying code): filling a 64 KiB buffer
 * there took about 1.3 s instead of well under a millisecond. A page-aligned, page-sized
 * object in .rodata ends past the last code page, and .data/.bss follow .rodata. */
static const u8 virtio_code_guard[4096] __attribute__((aligned(4096), used)) = {1};

/* ---- command line ---- */

/* Finds `key` (e.g. "vsock.listen=") as a whole word of the command line; returns the value
 * after it, or 0. */
static inline const char *cmdline_find(const char *cmdline, const char *key) {
    for (const char *p = cmdline; p && *p; p++) {
        if (p != cmdline && p[-1] != ' ') continue;
        const char *k = key, *q = p;
        while (*k && *q == *k) k++, q++;
        if (!*k) return q;
    }
    return 0;
}

/* Parses a decimal or 0x-prefixed hex number; *end points past it. */
static inline u64 parse_u64(const char *s, const char **end) {
    u64 v = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        for (;; s++) {
            u8 c = (u8)*s;
            if (c >= '0' && c <= '9') v = v * 16 + (c - '0');
            else if (c >= 'a' && c <= 'f') v = v * 16 + (c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v = v * 16 + (c - 'A' + 10);
            else break;
        }
    } else {
        while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
    }
    if (end) *end = s;
    return v;
}

/* The numeric value of `key` on the command line, or `fallback` when absent. */
static inline u64 cmdline_u64(const char *cmdline, const char *key, u64 fallback) {
    const char *v = cmdline_find(cmdline, key);
    return v ? parse_u64(v, 0) : fallback;
}

/* The command line from boot_params (cmd_line_ptr at 0x228). */
static inline const char *boot_cmdline(const u8 *boot_params) {
    return (const char *)(u64)(*(const u32 *)(boot_params + 0x228));
}

/* ---- devices ---- */

struct virtio_dev {
    u64 base;
    u32 irq;
    u32 device_id;
    u64 features; /* negotiated */
    u64 offered;  /* what the device offered */
};

static inline u32 vm_read(const struct virtio_dev *d, u32 reg) { return *(volatile u32 *)(d->base + reg); }
static inline void vm_write(const struct virtio_dev *d, u32 reg, u32 v) { *(volatile u32 *)(d->base + reg) = v; }
static inline u8 vm_config8(const struct virtio_dev *d, u32 off) {
    return *(volatile u8 *)(d->base + VIRTIO_MMIO_CONFIG + off);
}
/* Little-endian config field read bytewise, re-read until ConfigGeneration is stable. */
static inline u64 vm_config64(const struct virtio_dev *d, u32 off) {
    u32 gen;
    u64 v;
    do {
        gen = *(volatile u32 *)(d->base + 0xfc);
        v = 0;
        for (int i = 7; i >= 0; i--) v = (v << 8) | vm_config8(d, off + (u32)i);
    } while (gen != *(volatile u32 *)(d->base + 0xfc));
    return v;
}

/* Parses every `virtio_mmio.device=<size>@<addr>:<irq>` argument (Linux's format) and keeps
 * those whose window holds a virtio-mmio version 2 device. Returns how many it found. */
static inline int virtio_discover(const char *cmdline, struct virtio_dev *devs, int max) {
    static const char key[] = "virtio_mmio.device=";
    int found = 0;
    const char *p = cmdline;
    while (found < max && (p = cmdline_find(p, key)) != 0) {
        const char *s = p;
        u64 size = parse_u64(s, &s);
        if (*s == 'K' || *s == 'k') size <<= 10, s++;
        else if (*s == 'M' || *s == 'm') size <<= 20, s++;
        if (*s++ != '@') { puts("virtio: malformed argument\n"); continue; }
        u64 addr = parse_u64(s, &s);
        if (*s++ != ':') { puts("virtio: malformed argument\n"); continue; }
        u64 irq = parse_u64(s, &s);
        p = s;
        if (size < 0x200 || addr == 0 || addr + size > (1UL << 32)) {
            puts("virtio: window outside the identity map: "); put_hex(addr); puts("\n");
            continue;
        }
        struct virtio_dev d = {.base = addr, .irq = (u32)irq};
        if (vm_read(&d, VIRTIO_MMIO_MAGIC) != VIRTIO_MMIO_MAGIC_VALUE) {
            puts("virtio: bad magic at "); put_hex(addr); puts("\n");
            continue;
        }
        if (vm_read(&d, VIRTIO_MMIO_VERSION) != 2) {
            puts("virtio: not a version 2 (modern) device at "); put_hex(addr); puts("\n");
            continue;
        }
        d.device_id = vm_read(&d, VIRTIO_MMIO_DEVICE_ID);
        if (d.device_id == 0) continue; /* an empty slot */
        devs[found++] = d;
    }
    return found;
}

/* Resets the device and negotiates VIRTIO_F_VERSION_1 plus those of `wanted` the device
 * offers. Returns 0, or -1 (and says why) when the device refuses. */
static inline int virtio_negotiate(struct virtio_dev *d, u64 wanted) {
    vm_write(d, VIRTIO_MMIO_STATUS, 0);
    for (int i = 0; i < 1000 && vm_read(d, VIRTIO_MMIO_STATUS) != 0; i++) {}
    if (vm_read(d, VIRTIO_MMIO_STATUS) != 0) { puts("virtio: reset did not complete\n"); return -1; }
    vm_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    vm_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    vm_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    u64 offered = vm_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
    vm_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    offered |= (u64)vm_read(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
    d->offered = offered;
    if (!(offered & VIRTIO_F_VERSION_1)) {
        puts("virtio: device does not offer VERSION_1\n");
        vm_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_FAILED);
        return -1;
    }
    u64 accepted = offered & (wanted | VIRTIO_F_VERSION_1);
    vm_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    vm_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)accepted);
    vm_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    vm_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(accepted >> 32));
    u32 status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
    vm_write(d, VIRTIO_MMIO_STATUS, status);
    if (!(vm_read(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
        puts("virtio: device refused features "); put_hex(accepted); puts("\n");
        vm_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_FAILED);
        return -1;
    }
    d->features = accepted;
    return 0;
}

/* Sets DRIVER_OK once the queues are ready; -1 when the device then wants a reset. */
static inline int virtio_driver_ok(struct virtio_dev *d) {
    u32 status = vm_read(d, VIRTIO_MMIO_STATUS) | VIRTIO_STATUS_DRIVER_OK;
    vm_write(d, VIRTIO_MMIO_STATUS, status);
    status = vm_read(d, VIRTIO_MMIO_STATUS);
    if (status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED) || !(status & VIRTIO_STATUS_DRIVER_OK)) {
        puts("virtio: device did not accept DRIVER_OK, status "); put_hex(status); puts("\n");
        return -1;
    }
    return 0;
}

/* Acknowledges whatever InterruptStatus shows (used buffer and/or config change). */
static inline u32 virtio_ack_interrupt(struct virtio_dev *d) {
    u32 isr = vm_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
    if (isr) vm_write(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
    return isr;
}

/* ---- split virtqueues ---- */

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
struct virtq_used_elem {
    u32 id;
    u32 len;
};

/* One page holds a whole queue of up to VQ_MAX_SIZE entries: descriptor table at 0, driver
 * (available) ring at 1 KiB, device (used) ring at 2 KiB. */
struct virtq_page {
    u8 bytes[4096];
} __attribute__((aligned(4096)));
#define VQ_AVAIL_OFF 1024
#define VQ_USED_OFF 2048

struct virtq {
    struct virtio_dev *dev;
    u16 index;
    u16 size;
    volatile struct virtq_desc *desc;
    volatile u16 *avail; /* flags, idx, ring[size] */
    volatile u16 *used_hdr; /* flags, idx */
    volatile struct virtq_used_elem *used_ring;
    u16 free_head;
    u16 num_free;
    u16 next_avail;
    u16 last_used;
    u16 chain_len[VQ_MAX_SIZE]; /* descriptors per in-flight chain, by head; 0 = free */
};

/* One buffer of a chain: `device_writes` makes it device-writable (VIRTQ_DESC_F_WRITE). */
struct vbuf {
    const void *addr;
    u32 len;
    int device_writes;
};

/* Builds queue `index` of `d` in `page` with at most `size` entries (capped by the device's
 * QueueNumMax and VQ_MAX_SIZE; `size` must be a power of two). Returns 0 or -1. */
static inline int vq_init(struct virtq *q, struct virtio_dev *d, u16 index, struct virtq_page *page, u16 size) {
    vm_write(d, VIRTIO_MMIO_QUEUE_SEL, index);
    if (vm_read(d, VIRTIO_MMIO_QUEUE_READY) != 0) { puts("virtio: queue already ready\n"); return -1; }
    u32 max = vm_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max == 0) { puts("virtio: queue "); put_dec(index); puts(" does not exist\n"); return -1; }
    if (size > VQ_MAX_SIZE) size = VQ_MAX_SIZE;
    while (size > max) size >>= 1;
    memset(page, 0, sizeof(*page));
    memset(q, 0, sizeof(*q));
    q->dev = d;
    q->index = index;
    q->size = size;
    q->desc = (volatile struct virtq_desc *)page->bytes;
    q->avail = (volatile u16 *)(page->bytes + VQ_AVAIL_OFF);
    q->used_hdr = (volatile u16 *)(page->bytes + VQ_USED_OFF);
    q->used_ring = (volatile struct virtq_used_elem *)(page->bytes + VQ_USED_OFF + 4);
    for (u16 i = 0; i < size; i++) q->desc[i].next = (u16)(i + 1);
    q->num_free = size;
    u64 desc = (u64)q->desc, avail = (u64)q->avail, used = (u64)q->used_hdr;
    vm_write(d, VIRTIO_MMIO_QUEUE_NUM, size);
    vm_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)desc);
    vm_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (u32)(desc >> 32));
    vm_write(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)avail);
    vm_write(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
    vm_write(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)used);
    vm_write(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
    vm_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
    if (vm_read(d, VIRTIO_MMIO_QUEUE_READY) != 1) { puts("virtio: queue not ready\n"); return -1; }
    return 0;
}

/* Makes a chain of `n` buffers available to the device (not yet notified). Returns the head
 * descriptor index, or -1 when the queue has too few free descriptors. */
static inline int vq_add(struct virtq *q, const struct vbuf *bufs, int n) {
    if (n <= 0 || n > q->num_free) return -1;
    u16 head = q->free_head, i = head, last = head;
    for (int k = 0; k < n; k++) {
        q->desc[i].addr = (u64)bufs[k].addr;
        q->desc[i].len = bufs[k].len;
        q->desc[i].flags = (u16)((bufs[k].device_writes ? VIRTQ_DESC_F_WRITE : 0) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
        last = i;
        i = q->desc[i].next;
    }
    q->free_head = q->desc[last].next;
    q->num_free = (u16)(q->num_free - n);
    q->chain_len[head] = (u16)n;
    q->avail[2 + (q->next_avail % q->size)] = head;
    barrier(); /* the ring entry before the index that publishes it */
    q->next_avail++;
    q->avail[1] = q->next_avail;
    return head;
}

/* Tells the device about new buffers on this queue. */
static inline void vq_kick(struct virtq *q) {
    mb();
    vm_write(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

/* Takes one used chain if the device returned one: its head (freed for reuse) and the byte
 * count the device wrote in *len. Returns -1 when nothing is used yet, -2 when the device
 * returned a head we never made available (reported). */
static inline int vq_take_used(struct virtq *q, u32 *len) {
    barrier();
    if (q->used_hdr[1] == q->last_used) return -1;
    barrier(); /* the index before the entry it covers */
    volatile struct virtq_used_elem *e = &q->used_ring[q->last_used % q->size];
    u32 id = e->id, written = e->len;
    q->last_used++;
    if (id >= q->size || q->chain_len[id] == 0) {
        puts("FAIL: virtio: device used descriptor "); put_dec(id); puts(" that was not in flight\n");
        return -2;
    }
    u16 n = q->chain_len[id], i = (u16)id;
    q->chain_len[id] = 0;
    for (u16 k = 1; k < n; k++) i = q->desc[i].next;
    q->desc[i].next = q->free_head;
    q->free_head = (u16)id;
    q->num_free = (u16)(q->num_free + n);
    if (len) *len = written;
    return (int)id;
}

/* Polls for one used chain for at most VIRTIO_TIMEOUT_CYCLES; acknowledges the interrupt the
 * device raised for it. Returns the head, or -1 on timeout / -2 on a bogus used entry. */
static inline int vq_wait_used(struct virtq *q, u32 *len) {
    u64 start = rdtsc();
    for (;;) {
        int head = vq_take_used(q, len);
        if (head != -1) {
            virtio_ack_interrupt(q->dev);
            return head;
        }
        if (rdtsc() - start > VIRTIO_TIMEOUT_CYCLES) return -1;
        __asm__ volatile("pause");
    }
}

/* Adds a chain, notifies and waits for the device to use it. Returns the used length, or -1
 * (reported as FAIL with `what`) on a full queue, a timeout or another chain coming back. */
static inline long vq_submit_wait(struct virtq *q, const struct vbuf *bufs, int n, const char *what) {
    int head = vq_add(q, bufs, n);
    if (head < 0) { puts("FAIL: "); puts(what); puts(": queue full\n"); return -1; }
    vq_kick(q);
    u32 len = 0;
    int got = vq_wait_used(q, &len);
    if (got == -1) { puts("FAIL: "); puts(what); puts(": timeout waiting for the device\n"); return -1; }
    if (got != head) { puts("FAIL: "); puts(what); puts(": unexpected used head\n"); return -1; }
    return len;
}

#endif
