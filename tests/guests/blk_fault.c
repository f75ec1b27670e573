/* What a guest sees when its disk's backing file is damaged under it. It sets up the first
 * virtio-blk disk, prints "fault ready capacity=N" and waits for a byte on the serial
 * console; the host test breaks the backing file (truncates, removes, fills the file system)
 * and then sends the byte. The guest then reads the first and last sectors, writes
 * blk.write_kib KiB (default 64) from sector 0 in 64 KiB requests until one fails, flushes,
 * reads the first sector again, and reports each request's status:
 *   read first status=S / read last status=S / write kib=K status=S / flush status=S /
 *   reread first status=S, then "done". A request the device never answers is a FAIL. */
#include "serial_input.h"

#define VIRTIO_BLK_F_FLUSH (1UL << 9)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define SECTOR 512
#define CHUNK (64 * 1024)

struct blk_req_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

static struct virtq_page queue_page;
static struct virtio_dev dev;
static struct virtq q;
static u8 data[CHUNK] __attribute__((aligned(4096)));
static int failures;

static void fail(const char *what) {
    failures++;
    puts("FAIL: "); puts(what); puts("\n");
}

/* One request, header / data / status in their own descriptors; the status, or -1. */
static int request(u32 type, u64 sector, void *buf, u32 len, int device_writes) {
    static struct blk_req_hdr hdr;
    static volatile u8 status;
    hdr = (struct blk_req_hdr){type, 0, sector};
    status = 0xff;
    struct vbuf chain[3] = {{&hdr, sizeof(hdr), 0}, {buf, len, device_writes}, {(const void *)&status, 1, 1}};
    int n = len ? 3 : 2;
    if (!len) chain[1] = chain[2];
    if (vq_submit_wait(&q, chain, n, "blk request") < 0) { failures++; return -1; }
    return status;
}

static void report(const char *what, int status) {
    puts(what); puts(" status="); put_dec((u64)status); puts("\n");
}

void guest_main(const u8 *boot_params) {
    const char *cmdline = boot_cmdline(boot_params);
    puts("veil-test-guest blk_fault\n");
    struct virtio_dev found[VIRTIO_MAX_DEVICES];
    int n = virtio_discover(cmdline, found, VIRTIO_MAX_DEVICES);
    for (int i = 0; i < n; i++)
        if (found[i].device_id == VIRTIO_ID_BLOCK) { dev = found[i]; break; }
    if (!dev.base) { fail("no virtio-blk device"); puts("failed\n"); return; }
    if (virtio_negotiate(&dev, VIRTIO_BLK_F_FLUSH) < 0 || vq_init(&q, &dev, 0, &queue_page, 16) < 0 ||
        virtio_driver_ok(&dev) < 0) {
        fail("device setup"); puts("failed\n"); return;
    }
    u64 capacity = vm_config64(&dev, 0);
    puts("fault ready capacity="); put_dec(capacity); puts("\n");
    if (serial_wait_byte() < 0) { fail("no go from the host"); puts("failed\n"); return; }

    int st = request(VIRTIO_BLK_T_IN, 0, data, SECTOR, 1);
    if (st >= 0) report("read first", st);
    st = request(VIRTIO_BLK_T_IN, capacity - 1, data, SECTOR, 1);
    if (st >= 0) report("read last", st);

    u64 want_kib = cmdline_u64(cmdline, "blk.write_kib=", 64), kib = 0;
    fill_bytes(data, 0x5a, CHUNK);
    st = 0;
    while (kib < want_kib && (kib + CHUNK / 1024) * 2 <= capacity) {
        st = request(VIRTIO_BLK_T_OUT, kib * 2, data, CHUNK, 0);
        if (st != 0) break;
        kib += CHUNK / 1024;
    }
    if (st >= 0) { puts("write kib="); put_dec(kib); report("", st); }
    st = request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0);
    if (st >= 0) report("flush", st);
    st = request(VIRTIO_BLK_T_IN, 0, data, SECTOR, 1);
    if (st >= 0) report("reread first", st);
    puts(failures ? "failed\n" : "done\n");
}
