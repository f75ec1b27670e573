/* A virtio-blk driver test: on the first disk it writes a pattern with differently split
 * descriptor chains, flushes, reads it back, asks for the serial (GET_ID) and checks the
 * sector bounds; on a second, read-only disk it checks VIRTIO_BLK_F_RO and that a write
 * fails with IOERR. With `blk.bench_mib=N` it instead writes then reads N MiB sequentially
 * and reports the TSC cycles each took.
 *
 * Pattern byte i of sector s: (s * 31 + i * 7 + 1) & 0xff (the host test computes the same). */
#include "virtio.h"

#define VIRTIO_BLK_F_RO (1UL << 5)
#define VIRTIO_BLK_F_FLUSH (1UL << 9)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define SECTOR 512

struct blk_req_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

struct blk {
    struct virtio_dev dev;
    struct virtq q;
    u64 capacity;
};

static struct virtq_page queue_pages[2];
static struct blk disks[2];
static int failures;

/* Device-readable header + data in one buffer, for the "header and data share a
 * descriptor" layout. */
static u8 combined[sizeof(struct blk_req_hdr) + 8 * SECTOR] __attribute__((aligned(16)));
static u8 data[64 * 1024] __attribute__((aligned(4096)));
static u8 bench_buf[512 * 1024] __attribute__((aligned(4096)));

static void fail(const char *what) {
    failures++;
    puts("FAIL: "); puts(what); puts("\n");
}

static u8 pattern(u64 sector, u32 i) { return (u8)(sector * 31 + i * 7 + 1); }

static void fill(u8 *buf, u64 sector, u32 sectors) {
    for (u32 s = 0; s < sectors; s++)
        for (u32 i = 0; i < SECTOR; i++) buf[s * SECTOR + i] = pattern(sector + s, i);
}

static int check(const u8 *buf, u64 sector, u32 sectors) {
    for (u32 s = 0; s < sectors; s++)
        for (u32 i = 0; i < SECTOR; i++)
            if (buf[s * SECTOR + i] != pattern(sector + s, i)) return 0;
    return 1;
}

/* One request: header, then `n` data buffers (device-writable for reads and GET_ID), then
 * the status byte, each in its own descriptor. Returns the status, or -1 on a driver-level
 * failure (already reported). */
static int request(struct blk *b, u32 type, u64 sector, const struct vbuf *payload, int n, const char *what) {
    static struct blk_req_hdr hdr;
    static volatile u8 status;
    struct vbuf chain[8];
    if (n > 6) return -1;
    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status = 0xff;
    chain[0] = (struct vbuf){&hdr, sizeof(hdr), 0};
    for (int i = 0; i < n; i++) chain[1 + i] = payload[i];
    chain[1 + n] = (struct vbuf){(const void *)&status, 1, 1};
    if (vq_submit_wait(&b->q, chain, n + 2, what) < 0) { failures++; return -1; }
    return status;
}

static int setup(struct blk *b, struct virtq_page *page, const char *name) {
    if (virtio_negotiate(&b->dev, VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH) < 0) return -1;
    if (vq_init(&b->q, &b->dev, 0, page, 64) < 0) return -1;
    if (virtio_driver_ok(&b->dev) < 0) return -1;
    b->capacity = vm_config64(&b->dev, 0);
    puts(name);
    puts(" addr="); put_hex(b->dev.base);
    puts(" irq="); put_dec(b->dev.irq);
    puts(" capacity="); put_dec(b->capacity);
    puts(" ro="); put_dec((b->dev.offered & VIRTIO_BLK_F_RO) != 0);
    puts(" flush="); put_dec((b->dev.features & VIRTIO_BLK_F_FLUSH) != 0);
    puts(" queue="); put_dec(b->q.size);
    puts("\n");
    return 0;
}

static void expect_status(int got, int want, const char *what) {
    if (got == -1) return; /* reported already */
    puts(what); puts(" status="); put_dec((u64)got); puts("\n");
    if (got != want) fail(what);
}

static void read_write_disk(struct blk *b) {
    if (b->capacity < 64) { fail("blk0 too small: need 64 sectors"); return; }
    u64 last = b->capacity - 8;

    /* 1. Sectors 0-7: header, data, status each in their own descriptor. */
    fill(data, 0, 8);
    struct vbuf one = {data, 8 * SECTOR, 0};
    expect_status(request(b, VIRTIO_BLK_T_OUT, 0, &one, 1, "blk0 write 0-7"), VIRTIO_BLK_S_OK, "blk0 write 0-7");

    /* 2. Sectors 8-15: the data split over four descriptors of uneven sizes. */
    fill(data + 8 * SECTOR, 8, 8);
    struct vbuf split[4] = {
        {data + 8 * SECTOR, 100, 0},
        {data + 8 * SECTOR + 100, 1436, 0},
        {data + 8 * SECTOR + 1536, 2048, 0},
        {data + 8 * SECTOR + 3584, 512, 0},
    };
    expect_status(request(b, VIRTIO_BLK_T_OUT, 8, split, 4, "blk0 write 8-15 split"), VIRTIO_BLK_S_OK, "blk0 write 8-15 split");

    /* 3. The last 8 sectors: header and data share one descriptor, status in another. */
    struct blk_req_hdr hdr = {VIRTIO_BLK_T_OUT, 0, last};
    memcpy(combined, &hdr, sizeof(hdr));
    fill(combined + sizeof(hdr), last, 8);
    static volatile u8 status;
    status = 0xff;
    struct vbuf shared[2] = {{combined, sizeof(combined), 0}, {(const void *)&status, 1, 1}};
    if (vq_submit_wait(&b->q, shared, 2, "blk0 write last") >= 0) expect_status(status, VIRTIO_BLK_S_OK, "blk0 write last");
    else failures++;

    /* 4. A write that would cross the end of the disk is refused and writes nothing (its
     * data differs from the pattern, so the host test sees any partial write). */
    memset(data + 32 * SECTOR, 0xee, 2 * SECTOR);
    struct vbuf across = {data + 32 * SECTOR, 2 * SECTOR, 0};
    expect_status(request(b, VIRTIO_BLK_T_OUT, b->capacity - 1, &across, 1, "blk0 write beyond end"), VIRTIO_BLK_S_IOERR, "blk0 write beyond end");

    if (b->dev.features & VIRTIO_BLK_F_FLUSH)
        expect_status(request(b, VIRTIO_BLK_T_FLUSH, 0, 0, 0, "blk0 flush"), VIRTIO_BLK_S_OK, "blk0 flush");
    else
        fail("blk0 does not offer VIRTIO_BLK_F_FLUSH");

    /* 5. Read sectors 0-15 back into two device-writable descriptors. */
    memset(data, 0, 16 * SECTOR);
    struct vbuf halves[2] = {{data, 3000, 1}, {data + 3000, 16 * SECTOR - 3000, 1}};
    int st = request(b, VIRTIO_BLK_T_IN, 0, halves, 2, "blk0 read 0-15");
    expect_status(st, VIRTIO_BLK_S_OK, "blk0 read 0-15");
    if (st == VIRTIO_BLK_S_OK) {
        if (check(data, 0, 16)) puts("blk0 readback 0-15 ok\n");
        else fail("blk0 readback 0-15 differs from what was written");
    }
    memset(data, 0, 8 * SECTOR);
    struct vbuf tail = {data, 8 * SECTOR, 1};
    st = request(b, VIRTIO_BLK_T_IN, last, &tail, 1, "blk0 read last");
    expect_status(st, VIRTIO_BLK_S_OK, "blk0 read last");
    if (st == VIRTIO_BLK_S_OK) {
        if (check(data, last, 8)) puts("blk0 readback last ok\n");
        else fail("blk0 readback of the last sectors differs");
    }

    /* 6. Reading past the end fails. */
    struct vbuf past = {data, SECTOR, 1};
    expect_status(request(b, VIRTIO_BLK_T_IN, b->capacity, &past, 1, "blk0 read beyond end"), VIRTIO_BLK_S_IOERR, "blk0 read beyond end");

    /* 7. The serial number: 20 bytes, NUL padded. */
    static char id[21];
    memset(id, 0, sizeof(id));
    struct vbuf idbuf = {id, 20, 1};
    st = request(b, VIRTIO_BLK_T_GET_ID, 0, &idbuf, 1, "blk0 get id");
    expect_status(st, VIRTIO_BLK_S_OK, "blk0 get id");
    if (st == VIRTIO_BLK_S_OK) { puts("blk0 id=["); puts(id); puts("]\n"); }
}

/* Several requests in flight at once, then the interrupt status they raise, then a device
 * reset and a fresh setup that still reads what was written. */
static void queue_and_reset(struct blk *b, struct virtq_page *page) {
    enum { N = 8 };
    static struct blk_req_hdr hdrs[N];
    static volatile u8 statuses[N];
    int heads[N];
    fill_bytes(data, 0, N * SECTOR);
    for (int i = 0; i < N; i++) {
        hdrs[i] = (struct blk_req_hdr){VIRTIO_BLK_T_IN, 0, (u64)(N - 1 - i)};
        statuses[i] = 0xff;
        struct vbuf chain[3] = {
            {&hdrs[i], sizeof(hdrs[i]), 0},
            {data + (u64)(N - 1 - i) * SECTOR, SECTOR, 1},
            {(const void *)&statuses[i], 1, 1},
        };
        heads[i] = vq_add(&b->q, chain, 3);
        if (heads[i] < 0) { fail("blk0 batch: queue full"); return; }
    }
    vq_kick(&b->q);
    /* Collect all eight without acknowledging, then look at InterruptStatus. */
    int done = 0;
    u64 start = rdtsc();
    while (done < N && rdtsc() - start < VIRTIO_TIMEOUT_CYCLES) {
        u32 len;
        int head = vq_take_used(&b->q, &len);
        if (head == -2) { failures++; return; }
        if (head >= 0) done++;
    }
    if (done < N) { fail("blk0 batch: timeout"); return; }
    int ok = 1;
    for (int i = 0; i < N; i++) ok &= statuses[i] == VIRTIO_BLK_S_OK;
    if (ok && check(data, 0, N)) puts("blk0 batch of 8 ok\n");
    else fail("blk0 batch of 8 reads returned wrong data or status");
    u32 isr = vm_read(&b->dev, VIRTIO_MMIO_INTERRUPT_STATUS);
    vm_write(&b->dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
    u32 after = vm_read(&b->dev, VIRTIO_MMIO_INTERRUPT_STATUS);
    puts("blk0 interrupt status="); put_dec(isr); puts(" after_ack="); put_dec(after); puts("\n");

    /* Reset: status 0 must read back 0 and the queue must be unready; then start over. */
    vm_write(&b->dev, VIRTIO_MMIO_STATUS, 0);
    vm_write(&b->dev, VIRTIO_MMIO_QUEUE_SEL, 0);
    puts("blk0 reset status="); put_dec(vm_read(&b->dev, VIRTIO_MMIO_STATUS));
    puts(" queue_ready="); put_dec(vm_read(&b->dev, VIRTIO_MMIO_QUEUE_READY)); puts("\n");
    if (setup(b, page, "blk0") < 0) { fail("blk0 setup after reset"); return; }
    fill_bytes(data, 0, 16 * SECTOR);
    struct vbuf all = {data, 16 * SECTOR, 1};
    if (request(b, VIRTIO_BLK_T_IN, 0, &all, 1, "blk0 read after reset") == VIRTIO_BLK_S_OK && check(data, 0, 16))
        puts("blk0 readback after reset ok\n");
    else
        fail("blk0 read after reset");
}

static void read_only_disk(struct blk *b) {
    if (!(b->dev.offered & VIRTIO_BLK_F_RO)) fail("blk1 does not offer VIRTIO_BLK_F_RO");
    fill(data, 0, 1);
    struct vbuf w = {data, SECTOR, 0};
    expect_status(request(b, VIRTIO_BLK_T_OUT, 0, &w, 1, "blk1 write"), VIRTIO_BLK_S_IOERR, "blk1 write");
    memset(data, 0, SECTOR);
    struct vbuf r = {data, SECTOR, 1};
    int st = request(b, VIRTIO_BLK_T_IN, 0, &r, 1, "blk1 read");
    expect_status(st, VIRTIO_BLK_S_OK, "blk1 read");
    if (st == VIRTIO_BLK_S_OK) {
        u64 sum = 0;
        for (u32 i = 0; i < SECTOR; i++) sum = sum * 31 + data[i];
        puts("blk1 sector0 hash="); put_hex(sum); puts("\n");
    }
}

/* 4 KiB requests at pseudo-random 4 KiB-aligned offsets inside the first `sectors` sectors,
 * one in flight: RANDOM_OPS writes (0x5a, like the sequential pass, so the image stays
 * uniform), then reads of the same offsets. */
#define RANDOM_OPS 1024
static void bench_random(struct blk *b, u64 sectors) {
    u64 pages = sectors / 8;
    struct vbuf buf = {bench_buf, 4096, 0};
    fill_bytes(bench_buf, 0x5a, 4096);
    u64 x = 0x9e3779b97f4a7c15UL, t0 = rdtsc();
    for (u32 i = 0; i < RANDOM_OPS; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        if (request(b, VIRTIO_BLK_T_OUT, ((x >> 33) % pages) * 8, &buf, 1, "bench random write") != VIRTIO_BLK_S_OK) {
            fail("bench random write");
            return;
        }
    }
    u64 t1 = rdtsc();
    buf.device_writes = 1;
    x = 0x9e3779b97f4a7c15UL;
    for (u32 i = 0; i < RANDOM_OPS; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        if (request(b, VIRTIO_BLK_T_IN, ((x >> 33) % pages) * 8, &buf, 1, "bench random read") != VIRTIO_BLK_S_OK) {
            fail("bench random read");
            return;
        }
    }
    u64 t2 = rdtsc();
    if (bench_buf[0] != 0x5a || !same_bytes(bench_buf, bench_buf + 1, 4095)) {
        fail("bench random read back wrong data");
        return;
    }
    puts("bench blk4k ops="); put_dec(RANDOM_OPS);
    puts(" write_cycles="); put_dec(t1 - t0);
    puts(" read_cycles="); put_dec(t2 - t1);
    puts("\n");
}

/* Sequential write then read of `mib` MiB in 512 KiB requests, one in flight, then the
 * random 4 KiB pass. */
static void bench(struct blk *b, u64 mib) {
    u64 sectors = mib << 11, chunk = sizeof(bench_buf) / SECTOR;
    if (sectors > b->capacity) { fail("bench: disk smaller than blk.bench_mib"); return; }
    /* Guest loops are slow here (see virtio.h): the data is one byte value, set and checked
     * with string instructions. */
    fill_bytes(bench_buf, 0x5a, sizeof(bench_buf));
    struct vbuf buf = {bench_buf, sizeof(bench_buf), 0};
    u64 t0 = rdtsc();
    for (u64 s = 0; s < sectors; s += chunk)
        if (request(b, VIRTIO_BLK_T_OUT, s, &buf, 1, "bench write") != VIRTIO_BLK_S_OK) { fail("bench write"); return; }
    if (request(b, VIRTIO_BLK_T_FLUSH, 0, 0, 0, "bench flush") != VIRTIO_BLK_S_OK) { fail("bench flush"); return; }
    u64 t1 = rdtsc();
    buf.device_writes = 1;
    fill_bytes(bench_buf, 0, sizeof(bench_buf));
    for (u64 s = 0; s < sectors; s += chunk)
        if (request(b, VIRTIO_BLK_T_IN, s, &buf, 1, "bench read") != VIRTIO_BLK_S_OK) { fail("bench read"); return; }
    u64 t2 = rdtsc();
    if (bench_buf[0] != 0x5a || !same_bytes(bench_buf, bench_buf + 1, sizeof(bench_buf) - 1)) {
        fail("bench read back wrong data");
        return;
    }
    puts("bench blk mib="); put_dec(mib);
    puts(" write_cycles="); put_dec(t1 - t0);
    puts(" read_cycles="); put_dec(t2 - t1);
    puts("\n");
    bench_random(b, sectors);
}

void guest_main(const u8 *boot_params) {
    const char *cmdline = boot_cmdline(boot_params);
    puts("veil-test-guest virtio_blk\n");
    struct virtio_dev found[VIRTIO_MAX_DEVICES];
    int n = virtio_discover(cmdline, found, VIRTIO_MAX_DEVICES), count = 0;
    for (int i = 0; i < n && count < 2; i++)
        if (found[i].device_id == VIRTIO_ID_BLOCK) disks[count++].dev = found[i];
    puts("blk devices="); put_dec((u64)count); puts("\n");
    if (count == 0) { fail("no virtio-blk device on the command line"); return; }
    static const char *names[2] = {"blk0", "blk1"};
    for (int i = 0; i < count; i++)
        if (setup(&disks[i], &queue_pages[i], names[i]) < 0) { fail("device setup"); return; }

    u64 bench_mib = cmdline_u64(cmdline, "blk.bench_mib=", 0);
    if (bench_mib) {
        bench(&disks[0], bench_mib);
    } else {
        read_write_disk(&disks[0]);
        if (!failures) queue_and_reset(&disks[0], &queue_pages[0]);
        if (count > 1) read_only_disk(&disks[1]);
    }
    puts(failures ? "failed\n" : "done\n");
}
