//! `build_igvm` (what `veil igvm build` runs): images built from a synthetic ELF (and the project's vmlinux when it has
//! been built), read back with the project's own IGVM loader, checked field by field against
//! the Linux boot protocol (struct layouts from linux-loader's kernel bindings), and measured.

use std::collections::HashMap;
use std::path::PathBuf;

use linux_loader::bootparam::boot_params;
use veil_snp::firmware::model::InsecureModelFirmware;
use veil_snp::firmware::LaunchFinish;
use veil_snp::igvm::{build_igvm, load_igvm, run_launch, BuildInput, LaunchPlan};
use veil_snp::{GuestPolicy, PageType};
use vm_memory::ByteValued;

const SIG: u32 = 0x00a0_0f11;
const KERNEL_AT: u64 = 0x100_0000;
const C_BIT: u64 = 1 << 51;
const MIB: u64 = 1 << 20;

/// A minimal x86_64 ET_EXEC ELF with one PT_LOAD per (paddr, data, memsz), written here from
/// the ELF specification (independently of the builder's parser).
fn elf(entry: u64, segments: &[(u64, Vec<u8>, u64)]) -> Vec<u8> {
    let mut out = vec![0u8; 64 + 56 * segments.len()];
    out[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    for (i, (paddr, data, memsz)) in segments.iter().enumerate() {
        let offset = out.len() as u64;
        out.extend_from_slice(data);
        let ph = 64 + 56 * i;
        let fields = [
            (0, 1u64 | (5 << 32)), // PT_LOAD, R+X
            (8, offset),
            (16, 0xffff_ffff_8000_0000 + paddr),
            (24, *paddr),
            (32, data.len() as u64),
            (40, *memsz),
            (48, 0x1000),
        ];
        for (at, v) in fields {
            out[ph + at..ph + at + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect()
}

struct Synthetic {
    kernel: Vec<u8>,
    text: Vec<u8>,
    initrd: Vec<u8>,
}

fn synthetic() -> Synthetic {
    // Segment 1: 0x1800 bytes of code, zero-filled to 16 KiB (two all-zero pages).
    // Segment 2: 8 bytes at 0x1005000.
    let text = pattern(0x1800, 0x5a);
    let kernel = elf(
        KERNEL_AT + 0x40,
        &[
            (KERNEL_AT, text.clone(), 0x4000),
            (KERNEL_AT + 0x5000, vec![7; 8], 8),
        ],
    );
    Synthetic {
        kernel,
        text,
        initrd: pattern(10_000, 0xa5),
    }
}

const CMDLINE: &str = "console=ttyS0 acpi=off";

fn input<'a>(s: &'a Synthetic, cmdline: &'a str, mem_mib: u64) -> BuildInput<'a> {
    BuildInput {
        kernel: &s.kernel,
        initrd: Some(&s.initrd),
        cmdline,
        mem_mib,
        policy: 0x30000,
        c_bit: 51,
    }
}

fn pages(plan: &LaunchPlan) -> HashMap<u64, (PageType, &[u8])> {
    let mut map = HashMap::new();
    for p in &plan.pages {
        let old = map.insert(p.gpa, (p.page_type, p.data.as_slice()));
        assert!(old.is_none(), "page {:#x} launched twice", p.gpa);
    }
    map
}

/// Bytes at `gpa` as the guest sees them after launch (pages without data read as zeros).
fn read(map: &HashMap<u64, (PageType, &[u8])>, gpa: u64, len: usize) -> Vec<u8> {
    (gpa..gpa + len as u64)
        .map(|a| match map.get(&(a & !0xfff)) {
            Some((PageType::Normal, [])) => 0,
            Some((PageType::Normal, data)) => data[(a & 0xfff) as usize],
            other => panic!("{a:#x} is not a data page: {other:?}"),
        })
        .collect()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn synthetic_kernel_image_reads_back() {
    let s = synthetic();
    let built = build_igvm(&input(&s, CMDLINE, 64)).unwrap();
    let plan = load_igvm(&built.bytes).unwrap();
    let map = pages(&plan);
    assert_eq!(plan.policy, 0x30000);
    assert_eq!(plan.sev_features, 1);

    // Kernel: data pages NORMAL with the file's bytes, the zero-filled tail as NORMAL pages
    // without data (pages of zeros).
    assert_eq!(map[&KERNEL_AT], (PageType::Normal, &s.text[..0x1000]));
    let mut partial = s.text[0x1000..].to_vec();
    partial.resize(0x1000, 0);
    assert_eq!(map[&(KERNEL_AT + 0x1000)], (PageType::Normal, &partial[..]));
    assert_eq!(map[&(KERNEL_AT + 0x2000)], (PageType::Normal, &[][..]));
    assert_eq!(map[&(KERNEL_AT + 0x3000)], (PageType::Normal, &[][..]));
    assert_eq!(
        read(&map, KERNEL_AT + 0x5000, 9),
        [7, 7, 7, 7, 7, 7, 7, 7, 0]
    );

    // Zero page, read through linux-loader's struct boot_params.
    let zp = read(&map, plan.bsp.rsi, 4096);
    let bp = boot_params::from_slice(&zp[..std::mem::size_of::<boot_params>()]).unwrap();
    assert_eq!({ bp.hdr.boot_flag }, 0xaa55);
    assert_eq!({ bp.hdr.header }, 0x5372_6448);
    let e820: Vec<(u64, u64, u32)> = bp.e820_table[..bp.e820_entries as usize]
        .iter()
        .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
        .collect();
    assert_eq!(
        e820,
        vec![
            (0, 0xa_0000, 1),
            (0xa_0000, 0x6_0000, 2),
            (0x10_0000, 64 * MIB - 0x10_0000, 1)
        ]
    );
    let cmd = u64::from(bp.hdr.cmd_line_ptr) | (u64::from(bp.ext_cmd_line_ptr) << 32);
    assert_eq!({ bp.hdr.cmdline_size } as usize, CMDLINE.len());
    let mut with_nul = CMDLINE.as_bytes().to_vec();
    with_nul.push(0);
    assert_eq!(read(&map, cmd, with_nul.len()), with_nul);
    let initrd = u64::from(bp.hdr.ramdisk_image) | (u64::from(bp.ext_ramdisk_image) << 32);
    assert_eq!({ bp.hdr.ramdisk_size } as usize, s.initrd.len());
    assert_eq!(initrd % 4096, 0);
    assert!(initrd + s.initrd.len() as u64 <= 64 * MIB && initrd >= 63 * MIB);
    assert_eq!(read(&map, initrd, s.initrd.len()), s.initrd);
    assert_eq!(built.summary.initrd_gpa, Some(initrd));

    // CC blob: magic "AMDE", secrets and CPUID pages of a page each, of the right types.
    let blob = read(&map, u64::from(bp.cc_blob_address), 40);
    assert_eq!(&blob[0..4], b"AMDE");
    let (secrets, secrets_len) = (
        u64_at(&blob, 8),
        u32::from_le_bytes(blob[16..20].try_into().unwrap()),
    );
    let (cpuid, cpuid_len) = (
        u64_at(&blob, 24),
        u32::from_le_bytes(blob[32..36].try_into().unwrap()),
    );
    assert_eq!((secrets_len, cpuid_len), (4096, 4096));
    assert_eq!(map[&secrets].0, PageType::Secrets);
    assert_eq!(map[&cpuid].0, PageType::Cpuid);

    // Every RAM page of the e820 map is validated at launch exactly once; nothing else is.
    for gpa in (0..64 * MIB).step_by(4096) {
        let hole = (0xa_0000..0x10_0000).contains(&gpa);
        assert_eq!(map.contains_key(&gpa), !hole, "page {gpa:#x}");
    }
    assert_eq!(map.len() as u64, (64 * MIB - 0x6_0000) / 4096);
    assert!(plan
        .required_memory
        .contains(&(0x10_0000, 64 * MIB - 0x10_0000)));

    // Page data in the file: GDT, CC blob, zero page, command line, 6 page-table pages, 3
    // kernel pages, 3 initrd pages (10000 bytes ending at 64 MiB straddle 3 pages). Every
    // page but SECRETS and CPUID has its contents measured.
    assert_eq!(built.summary.data_bytes(), 16 * 4096);
    assert_eq!(plan.measured_bytes(), (map.len() as u64 - 2) * 4096);
    assert_eq!(built.summary.measured_bytes(), plan.measured_bytes());
    assert_eq!(
        built.summary.zero_pages + built.summary.normal_pages + 2,
        map.len() as u64
    );
}

#[test]
fn bsp_starts_in_long_mode_on_c_bit_identity_map() {
    let s = synthetic();
    let plan = load_igvm(&build_igvm(&input(&s, CMDLINE, 64)).unwrap().bytes).unwrap();
    let map = pages(&plan);
    let v = &plan.bsp;
    assert_eq!(v.rip, KERNEL_AT + 0x40);
    assert_eq!(v.rsi, 0x7000);
    assert_eq!(v.efer & 0x500, 0x500, "EFER.LME|LMA");
    assert_eq!(v.cr0 & 0x8000_0001, 0x8000_0001, "CR0.PG|PE");
    assert_eq!(v.cr4 & 0x20, 0x20, "CR4.PAE");
    assert_eq!(v.cr3 & C_BIT, C_BIT, "CR3 carries the C-bit");
    assert_eq!((v.cs.selector, v.cs.attrib), (0x10, 0xa09b));
    assert_eq!((v.ds.selector, v.ss.selector), (0x18, 0x18));
    assert_eq!(v.rflags, 2);

    // The GDT entry CS selects is a present 64-bit code descriptor (L=1, D=0).
    let gdt = read(&map, v.gdtr.base, usize::from(v.cs.selector) + 8);
    let desc = u64_at(&gdt, usize::from(v.cs.selector));
    assert_eq!((desc >> 40) & 0x9a, 0x9a, "present code segment");
    assert_eq!((desc >> 53) & 3, 1, "L=1, D=0");
    assert!(v.gdtr.limit as usize >= usize::from(v.ss.selector) + 7);

    // Walk the measured page tables for the entry point, the zero page and the stack.
    for va in [v.rip, v.rsi, v.rsp, 0x3fff_f000] {
        let mut table = v.cr3 & !C_BIT & !0xfff;
        let mut level = 39;
        let pa = loop {
            let e = u64_at(&read(&map, table, 4096), ((va >> level) & 511) as usize * 8);
            assert_eq!(
                e & (C_BIT | 1),
                C_BIT | 1,
                "entry for {va:#x} at level {level}"
            );
            if level == 21 {
                assert_ne!(e & 0x80, 0, "2 MiB leaf");
                break (e & !C_BIT & !0x1f_ffff) | (va & 0x1f_ffff);
            }
            table = e & !C_BIT & !0xfff;
            level -= 9;
        };
        assert_eq!(pa, va);
    }
}

fn digest(bytes: &[u8]) -> [u8; 48] {
    load_igvm(bytes).unwrap().launch_digest(1, SIG).unwrap()
}

#[test]
fn digest_is_stable_and_follows_every_measured_input() {
    let s = synthetic();
    let base = build_igvm(&input(&s, CMDLINE, 64)).unwrap().bytes;
    assert_eq!(base, build_igvm(&input(&s, CMDLINE, 64)).unwrap().bytes);
    let d = digest(&base);
    assert_eq!(d, digest(&base));

    let mut kernel_byte = synthetic();
    let last = kernel_byte.kernel.len() - 1;
    kernel_byte.kernel[last] ^= 1;
    let mut initrd_byte = synthetic();
    initrd_byte.initrd[5000] ^= 1;
    let variants = [
        ("kernel byte", build_igvm(&input(&kernel_byte, CMDLINE, 64))),
        ("initrd byte", build_igvm(&input(&initrd_byte, CMDLINE, 64))),
        (
            "command line",
            build_igvm(&input(&s, "console=ttyS1 acpi=off", 64)),
        ),
        ("memory size", build_igvm(&input(&s, CMDLINE, 65))),
        (
            "C-bit",
            build_igvm(&BuildInput {
                c_bit: 47,
                ..input(&s, CMDLINE, 64)
            }),
        ),
    ];
    for (what, built) in variants {
        assert_ne!(
            digest(&built.unwrap().bytes),
            d,
            "{what} did not change the digest"
        );
    }
    let plan = load_igvm(&base).unwrap();
    assert_ne!(plan.launch_digest(2, SIG).unwrap(), d, "vCPU count");
}

#[test]
fn model_launch_accumulates_the_expected_digest() {
    let s = synthetic();
    let plan = load_igvm(&build_igvm(&input(&s, CMDLINE, 24)).unwrap().bytes).unwrap();
    let mut model = InsecureModelFirmware::new();
    let mut asked = Vec::new();
    run_launch(
        &mut model,
        &plan,
        GuestPolicy::new(plan.policy, false).unwrap(),
        &mut |page| {
            asked.push(page.page_type);
            vec![0; 4096]
        },
        &mut |_, _| {},
        &plan.vcpu_vmsas(1, SIG),
        &LaunchFinish::default(),
    )
    .unwrap();
    assert_eq!(
        model.launch_digest().bytes(),
        plan.launch_digest(1, SIG).unwrap()
    );
    assert!(asked.contains(&PageType::Cpuid) && asked.contains(&PageType::Secrets));
}

/// The project's guest kernel (`guest/` builds it into target/guest-kernel/vmlinux of the
/// main checkout); `VEIL_VMLINUX` overrides the path.
fn project_vmlinux() -> Option<PathBuf> {
    let path = std::env::var_os("VEIL_VMLINUX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/main/target/guest-kernel/vmlinux"));
    path.exists().then_some(path)
}

#[test]
fn project_vmlinux_builds_and_measures() {
    let Some(path) = project_vmlinux() else {
        eprintln!("skipping: no project vmlinux (build it with guest/, or set VEIL_VMLINUX)");
        return;
    };
    let kernel = std::fs::read(&path).unwrap();
    // An initramfs to measure along with the kernel, when given.
    let initrd = std::env::var_os("VEIL_INITRD").map(|p| std::fs::read(p).unwrap());
    let mem_mib = std::env::var("VEIL_MEM_MIB").map_or(256, |m| m.parse().unwrap());
    let built = build_igvm(&BuildInput {
        kernel: &kernel,
        initrd: initrd.as_deref(),
        cmdline: "console=ttyS0 acpi=off",
        mem_mib,
        policy: 0x30000,
        c_bit: 51,
    })
    .unwrap();
    let plan = load_igvm(&built.bytes).unwrap();
    let map = pages(&plan);
    // RIP is e_entry, which for vmlinux is the physical address of startup_64.
    assert_eq!(plan.bsp.rip, u64_at(&kernel, 24));
    // Each PT_LOAD segment's first bytes are in guest memory at its physical address.
    let (phoff, phnum) = (
        u64_at(&kernel, 32) as usize,
        u16::from_le_bytes([kernel[56], kernel[57]]),
    );
    for i in 0..usize::from(phnum) {
        let ph = &kernel[phoff + 56 * i..phoff + 56 * (i + 1)];
        if u32::from_le_bytes(ph[..4].try_into().unwrap()) != 1 {
            continue;
        }
        let (offset, paddr, filesz) = (
            u64_at(ph, 8) as usize,
            u64_at(ph, 24),
            u64_at(ph, 32) as usize,
        );
        let n = filesz.min(64 << 10);
        assert_eq!(
            read(&map, paddr, n),
            kernel[offset..offset + n],
            "segment at {paddr:#x}"
        );
    }
    let start = std::time::Instant::now();
    let digest = plan.launch_digest(1, SIG).unwrap();
    let elapsed = start.elapsed();
    let mib = plan.measured_bytes() as f64 / MIB as f64;
    eprintln!(
        "project vmlinux (initrd: {} bytes), {mem_mib} MiB: {} measured bytes ({mib:.2} MiB), {} data + {} zero-filled pages, \
         file {} bytes, digest {} in {elapsed:?} ({:.2} ms per measured MiB)",
        initrd.as_ref().map_or(0, Vec::len),
        plan.measured_bytes(),
        built.summary.normal_pages,
        built.summary.zero_pages,
        built.bytes.len(),
        hex::encode(digest),
        elapsed.as_secs_f64() * 1000.0 / mib
    );
    assert_eq!(built.summary.measured_bytes(), plan.measured_bytes());
}
