//! IGVM files built with the `igvm` crate, loaded into a launch plan, measured, and launched
//! through the insecure model firmware: the expected digest equals what the model accumulates.

use igvm::snp_defs::{SevFeatures, SevVmsa};
use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_SEV_SNP_PLATFORM_VERSION,
    IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};
use sha2::{Digest, Sha384};
use veil_snp::firmware::model::InsecureModelFirmware;
use veil_snp::firmware::{LaunchFinish, LaunchFirmware};
use veil_snp::igvm::{load_igvm, IgvmError, ParameterUse};
use veil_snp::vmsa::{Vmsa, RESET_EIP};
use veil_snp::{GuestPolicy, LaunchDigest, PageType, VMSA_GPA};
use zerocopy::FromZeros;

const MASK: u32 = 1;
const SIG: u32 = 0x00a0_0f11;

fn bsp_vmsa(rip: u64) -> Box<SevVmsa> {
    let mut v = SevVmsa::new_box_zeroed().unwrap();
    v.cs.selector = 0x10;
    v.cs.attrib = 0xa09b;
    v.cs.limit = 0xffff_ffff;
    v.ds.attrib = 0xc093;
    v.efer = 0x500;
    v.cr0 = 0x8000_0011;
    v.cr3 = 0x9000;
    v.cr4 = 0x20;
    v.rip = rip;
    v.rsi = 0x7000;
    v.rflags = 2;
    v.pat = 0x0007_0406_0007_0406;
    v.xcr0 = 1;
    v.sev_features = SevFeatures::new().with_snp(true);
    v
}

fn page_data(
    gpa: u64,
    data_type: IgvmPageDataType,
    flags: IgvmPageDataFlags,
    data: Vec<u8>,
) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::PageData {
        gpa,
        compatibility_mask: MASK,
        flags,
        data_type,
        data,
    }
}

fn build(kernel_byte: u8, rip: u64) -> Vec<u8> {
    build_with_insert(kernel_byte, rip, 0x20_0000)
}

fn build_with_insert(kernel_byte: u8, rip: u64, insert_gpa: u64) -> Vec<u8> {
    build_full(kernel_byte, rip, insert_gpa, None)
}

fn build_full(
    kernel_byte: u8,
    rip: u64,
    insert_gpa: u64,
    id_block: Option<IgvmDirectiveHeader>,
) -> Vec<u8> {
    let plain = IgvmPageDataFlags::new();
    let directives = vec![
        page_data(
            0x10_0000,
            IgvmPageDataType::NORMAL,
            plain,
            vec![kernel_byte; 4096],
        ),
        page_data(0x10_1000, IgvmPageDataType::NORMAL, plain, vec![2; 100]),
        page_data(0x10_2000, IgvmPageDataType::NORMAL, plain, Vec::new()),
        page_data(0x9000, IgvmPageDataType::NORMAL, plain, vec![3; 4096]),
        page_data(0x5000, IgvmPageDataType::SECRETS, plain, Vec::new()),
        page_data(0x6000, IgvmPageDataType::CPUID_DATA, plain, Vec::new()),
        page_data(
            0xa000,
            IgvmPageDataType::NORMAL,
            plain.with_unmeasured(true),
            Vec::new(),
        ),
        page_data(
            0xb000,
            IgvmPageDataType::NORMAL,
            plain.with_shared(true),
            vec![9; 4096],
        ),
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: 0x2000,
            parameter_area_index: 0,
            initial_data: Vec::new(),
        },
        IgvmDirectiveHeader::VpCount(IGVM_VHS_PARAMETER {
            parameter_area_index: 0,
            byte_offset: 0,
        }),
        IgvmDirectiveHeader::CommandLine(IGVM_VHS_PARAMETER {
            parameter_area_index: 0,
            byte_offset: 0x1000,
        }),
        IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa: insert_gpa,
            compatibility_mask: MASK,
            parameter_area_index: 0,
        }),
        IgvmDirectiveHeader::SnpVpContext {
            gpa: 0xffff_f000,
            compatibility_mask: MASK,
            vp_index: 0,
            vmsa: bsp_vmsa(rip),
        },
    ];
    let mut directives = directives;
    directives.extend(id_block);
    serialized(directives)
}

/// An SNP-only file (policy 0x30000) with these directives.
fn serialized(directives: Vec<IgvmDirectiveHeader>) -> Vec<u8> {
    let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: MASK,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::SEV_SNP,
        platform_version: IGVM_SEV_SNP_PLATFORM_VERSION,
        shared_gpa_boundary: 0,
    });
    let policy = IgvmInitializationHeader::GuestPolicy {
        policy: 0x30000,
        compatibility_mask: MASK,
    };
    let file = IgvmFile::new(IgvmRevision::V1, vec![platform], vec![policy], directives).unwrap();
    let mut out = Vec::new();
    file.serialize(&mut out).unwrap();
    out
}

/// The digest written out by hand from the IGVM semantics the plan documents.
fn by_hand(kernel_byte: u8, rip: u64, vcpus: u32) -> [u8; 48] {
    let mut ld = LaunchDigest::new();
    let mut short = vec![2u8; 100];
    short.resize(4096, 0);
    ld.update_normal(0x10_0000, &[kernel_byte; 4096]).unwrap();
    ld.update_normal(0x10_1000, &short).unwrap();
    // A page without data is a NORMAL page of zeros (the IGVM rule), not a ZERO page.
    ld.update_normal(0x10_2000, &[0; 4096]).unwrap();
    ld.update_normal(0x9000, &[3; 4096]).unwrap();
    ld.update_secrets(0x5000).unwrap();
    ld.update_cpuid(0x6000).unwrap();
    ld.update_unmeasured(0xa000, 0x1000).unwrap();
    ld.update_unmeasured(0x20_0000, 0x2000).unwrap();
    // BSP: the file's registers with EFER.SVME and CR4.MCE forced by KVM.
    let mut page = vec![0u8; 4096];
    let seg = |p: &mut Vec<u8>, at: usize, sel: u16, attr: u16, limit: u32| {
        p[at..at + 2].copy_from_slice(&sel.to_le_bytes());
        p[at + 2..at + 4].copy_from_slice(&attr.to_le_bytes());
        p[at + 4..at + 8].copy_from_slice(&limit.to_le_bytes());
    };
    seg(&mut page, 0x10, 0x10, 0xa09b, 0xffff_ffff);
    seg(&mut page, 0x30, 0, 0xc093, 0);
    let mut put = |at: usize, v: u64| page[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put(0xd0, 0x1500);
    put(0x148, 0x60);
    put(0x150, 0x9000);
    put(0x158, 0x8000_0011);
    put(0x170, 2);
    put(0x178, rip);
    put(0x268, 0x0007_0406_0007_0406);
    put(0x330, 0x7000);
    put(0x3b0, 1);
    put(0x3e8, 1);
    let digest: [u8; 48] = Sha384::digest(&page).into();
    ld.update_page(PageType::Vmsa, VMSA_GPA, digest);
    let ap = Vmsa::qemu_reset(RESET_EIP, 1, SIG).to_page();
    for _ in 1..vcpus {
        ld.update_vmsa(&ap).unwrap();
    }
    ld.bytes()
}

#[test]
fn plan_follows_the_igvm_directives() {
    let plan = load_igvm(&build(1, 0x10_0000)).unwrap();
    assert_eq!(plan.policy, 0x30000);
    assert_eq!(plan.sev_features, 1);
    let kinds: Vec<(u64, PageType)> = plan.pages.iter().map(|p| (p.gpa, p.page_type)).collect();
    assert_eq!(
        kinds,
        vec![
            (0x10_0000, PageType::Normal),
            (0x10_1000, PageType::Normal),
            (0x10_2000, PageType::Normal),
            (0x9000, PageType::Normal),
            (0x5000, PageType::Secrets),
            (0x6000, PageType::Cpuid),
            (0xa000, PageType::Unmeasured),
            (0x20_0000, PageType::Unmeasured),
            (0x20_1000, PageType::Unmeasured),
        ]
    );
    assert_eq!(plan.shared_pages, vec![(0xb000, vec![9; 4096])]);
    assert_eq!(plan.measured_bytes(), 4 * 4096);
    assert!(
        plan.pages[2].data.is_empty(),
        "a page of zeros carries no data"
    );
    let area = &plan.parameter_areas[0];
    assert_eq!((area.size, area.insert_gpa), (0x2000, Some(0x20_0000)));
    assert_eq!(
        area.uses,
        vec![
            (ParameterUse::VpCount, 0),
            (ParameterUse::CommandLine, 0x1000)
        ]
    );
    assert!(plan.takes_command_line());
    // The same area with its command-line parameter removed: the file no longer takes one.
    let mut without = plan.clone();
    without.parameter_areas[0]
        .uses
        .retain(|&(what, _)| what != ParameterUse::CommandLine);
    assert!(!without.takes_command_line());
    assert_eq!(plan.bsp.rip, 0x10_0000);
}

#[test]
fn digest_matches_hand_computation_and_the_model_launch() {
    let plan = load_igvm(&build(1, 0x10_0000)).unwrap();
    for vcpus in [1, 2, 4] {
        let expected = plan.launch_digest(vcpus, SIG).unwrap();
        assert_eq!(expected, by_hand(1, 0x10_0000, vcpus), "{vcpus} vCPUs");

        let mut model = InsecureModelFirmware::new();
        model
            .launch_start(GuestPolicy::new(plan.policy, false).unwrap())
            .unwrap();
        for page in &plan.pages {
            let mut data = if page.data.is_empty() {
                vec![0; 4096]
            } else {
                page.data.clone()
            };
            model
                .launch_update(page.gpa, page.page_type, &mut data)
                .unwrap();
        }
        model
            .launch_finish(&plan.vcpu_vmsas(vcpus, SIG), &LaunchFinish::default())
            .unwrap();
        assert_eq!(model.launch_digest().bytes(), expected, "{vcpus} vCPUs");
    }
}

#[test]
fn digest_changes_with_any_measured_input() {
    let base = load_igvm(&build(1, 0x10_0000))
        .unwrap()
        .launch_digest(2, SIG)
        .unwrap();
    let other_byte = load_igvm(&build(7, 0x10_0000))
        .unwrap()
        .launch_digest(2, SIG)
        .unwrap();
    let other_rip = load_igvm(&build(1, 0x10_0010))
        .unwrap()
        .launch_digest(2, SIG)
        .unwrap();
    let plan = load_igvm(&build(1, 0x10_0000)).unwrap();
    assert_ne!(base, other_byte);
    assert_ne!(base, other_rip);
    assert_ne!(base, plan.launch_digest(3, SIG).unwrap());
    assert_ne!(base, plan.launch_digest(2, 0x00a1_0f10).unwrap());
}

#[test]
fn malformed_files_are_rejected() {
    assert!(matches!(load_igvm(&[]), Err(IgvmError::Parse(_))));
    assert!(matches!(load_igvm(&[0u8; 64]), Err(IgvmError::Parse(_))));
    let mut bytes = build(1, 0x10_0000);
    bytes.truncate(bytes.len() / 2);
    assert!(load_igvm(&bytes).is_err());
    // A parameter area inserted where it would run past 2^52.
    let past_end = build_with_insert(1, 0x10_0000, (1 << 52) - 0x1000);
    assert!(matches!(
        load_igvm(&past_end),
        Err(IgvmError::BadParameterArea { index: 0, .. })
    ));
}

#[test]
fn run_launch_through_the_model_gives_the_expected_digest() {
    use veil_snp::igvm::run_launch;
    let plan = load_igvm(&build(5, 0x10_0000)).unwrap();
    let mut model = InsecureModelFirmware::new();
    let mut filled = Vec::new();
    let mut stored = Vec::new();
    run_launch(
        &mut model,
        &plan,
        GuestPolicy::new(plan.policy, false).unwrap(),
        &mut |page| {
            filled.push((page.gpa, page.page_type));
            vec![0xee; 4096]
        },
        &mut |gpa, data| stored.push((gpa, data.len())),
        &plan.vcpu_vmsas(2, SIG),
        &LaunchFinish::default(),
    )
    .unwrap();
    assert_eq!(
        model.launch_digest().bytes(),
        plan.launch_digest(2, SIG).unwrap()
    );
    // Only pages that are not NORMAL asked the VMM for contents.
    assert!(filled.iter().all(|(_, t)| *t != PageType::Normal));
    assert_eq!(filled.len(), 5);
    // Contiguous pages of one type went through one call: 0x100000-0x101fff NORMAL, then
    // 0x9000, 0x5000, 0x6000, 0xa000, and the two parameter pages together; the page of
    // zeros at 0x102000 was launched (the digest matches) but not stored back.
    assert_eq!(
        stored,
        vec![
            (0x10_0000, 0x2000),
            (0x9000, 0x1000),
            (0x5000, 0x1000),
            (0x6000, 0x1000),
            (0xa000, 0x1000),
            (0x20_0000, 0x2000)
        ]
    );
}

/// What `veil measure --igvm` prints (its front end is the `veil` package's): the plan's
/// digest, equal to the one computed by hand.
#[test]
fn measure_igvm_gives_the_plan_digest() {
    let signature = veil_snp::cpu_types::signature_of("EPYC-Milan").unwrap();
    let plan = load_igvm(&build(1, 0x10_0000)).unwrap();
    let digest = plan.launch_digest(2, signature).unwrap();
    assert_eq!(digest, by_hand(1, 0x10_0000, 2));
}

/// An IGVM SnpIdBlock directive carrying `block` signed by `key`, taken apart from the
/// firmware-layout auth block Veil builds.
fn id_block_directive(
    block: &veil_snp::firmware::IdBlock,
    key: &p384::ecdsa::SigningKey,
) -> (IgvmDirectiveHeader, veil_snp::firmware::IdAuthBlock) {
    use igvm_defs::{IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY, IGVM_VHS_SNP_ID_BLOCK_SIGNATURE};
    let auth = veil_snp::firmware::IdAuthBlock::sign(block, key);
    let a = auth.as_bytes();
    let sig = |at: usize| {
        Box::new(IGVM_VHS_SNP_ID_BLOCK_SIGNATURE {
            r_comp: a[at..at + 72].try_into().unwrap(),
            s_comp: a[at + 72..at + 144].try_into().unwrap(),
        })
    };
    let key_at = |at: usize| {
        Box::new(IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY {
            curve: u32::from_le_bytes(a[at..at + 4].try_into().unwrap()),
            reserved: 0,
            qx: a[at + 4..at + 76].try_into().unwrap(),
            qy: a[at + 76..at + 148].try_into().unwrap(),
        })
    };
    let header = IgvmDirectiveHeader::SnpIdBlock {
        compatibility_mask: MASK,
        author_key_enabled: 0,
        reserved: [0; 3],
        ld: block.ld,
        family_id: block.family_id,
        image_id: block.image_id,
        version: block.version,
        guest_svn: block.guest_svn,
        id_key_algorithm: 1,
        author_key_algorithm: 1,
        id_key_signature: sig(0x40),
        id_public_key: key_at(0x240),
        author_key_signature: sig(0x680),
        author_public_key: key_at(0x880),
    };
    (header, auth)
}

#[test]
fn id_block_from_the_file_reaches_launch_finish() {
    use veil_snp::firmware::IdBlock;
    use veil_snp::igvm::run_launch;
    let expected = load_igvm(&build(1, 0x10_0000))
        .unwrap()
        .launch_digest(1, SIG)
        .unwrap();
    let block = IdBlock {
        ld: expected,
        family_id: [0x46; 16],
        image_id: [0x49; 16],
        version: 1,
        guest_svn: 7,
        policy: 0x30000,
    };
    let key = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let (header, auth) = id_block_directive(&block, &key);
    let plan = load_igvm(&build_full(1, 0x10_0000, 0x20_0000, Some(header))).unwrap();
    let id = plan.id.clone().expect("ID block loaded");
    assert_eq!(id.block, block);
    assert_eq!(id.auth, auth);
    assert!(!id.author_key_enabled);
    // The ID block does not change the digest.
    assert_eq!(plan.launch_digest(1, SIG).unwrap(), expected);

    let launch = |vcpus: u32| {
        let mut model = InsecureModelFirmware::new();
        let finish = LaunchFinish {
            id: Some((id.block, id.auth.clone())),
            ..LaunchFinish::default()
        };
        run_launch(
            &mut model,
            &plan,
            GuestPolicy::new(plan.policy, false).unwrap(),
            &mut |_| vec![0; 4096],
            &mut |_, _| {},
            &plan.vcpu_vmsas(vcpus, SIG),
            &finish,
        )
        .map(|()| model)
    };
    let model = launch(1).unwrap();
    let report = model.attestation_report([0; 64], 0).unwrap();
    assert_eq!(report.image_id(), [0x49; 16]);
    assert_eq!(report.guest_svn(), 7);
    // Two vCPUs measure differently from what the ID block promises: refused.
    let err = launch(2).err().expect("digest mismatch").to_string();
    assert!(err.contains("launch digest"), "{err}");
}

/// KVM sets SNP_ACTIVE in every SNP VMSA, so a VP context without it would be measured
/// differently from what the file says: refused by name.
#[test]
fn a_vp_context_without_snp_active_is_refused() {
    let mut vmsa = bsp_vmsa(0x10_0000);
    vmsa.sev_features = SevFeatures::new();
    let bytes = serialized(vec![IgvmDirectiveHeader::SnpVpContext {
        gpa: 0xffff_f000,
        compatibility_mask: MASK,
        vp_index: 0,
        vmsa,
    }]);
    let err = load_igvm(&bytes).unwrap_err();
    assert!(matches!(err, IgvmError::NotSnpVmsa(0)), "{err}");
    assert!(err.to_string().contains("SNP_ACTIVE"), "{err}");
}

/// CRC-32 (IEEE) as IGVM's fixed header uses, so a patched file still passes the checksum.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// `build`'s file with the body of the first directive of type `typ` (with file data, if
/// `with_data`) changed by `patch(body, file_data_start)`, checksum updated.
fn patched(typ: u32, with_data: bool, patch: impl Fn(&mut [u8], u32)) -> Vec<u8> {
    let mut file = build(1, 0x10_0000);
    let (start, size) = (u32_at(&file, 8) as usize, u32_at(&file, 12) as usize);
    let data_start = start + size;
    let mut at = start;
    loop {
        let (t, len) = (u32_at(&file, at), u32_at(&file, at + 4) as usize);
        if t == typ && (!with_data || u32_at(&file, at + 8 + 12) != 0) {
            patch(&mut file[at + 8..at + 8 + len], data_start as u32);
            break;
        }
        at += 8 + len.next_multiple_of(8);
        assert!(at < data_start, "the test file has a {typ:#x} header");
    }
    fix_checksum(&mut file);
    file
}

/// Recomputes the fixed header's CRC32 (over the fixed and variable headers) after a patch.
fn fix_checksum(file: &mut [u8]) {
    let (start, size) = (u32_at(file, 8) as usize, u32_at(file, 12) as usize);
    file[20..24].fill(0);
    let crc = crc32(&[&file[..24], &file[start..start + size]]);
    file[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// `build`'s file with the file offset (bytes 12..16 of the body) of the first directive of
/// type `typ` that has file data replaced by `offset(file_data_start)`.
fn with_file_offset(typ: u32, offset: impl Fn(u32) -> u32) -> Vec<u8> {
    patched(typ, true, |body, data_start| {
        body[12..16].copy_from_slice(&offset(data_start).to_le_bytes())
    })
}

/// Found by fuzzing: igvm adds a parameter area's 64-bit size to its file offset unchecked.
#[test]
fn parameter_area_data_past_the_file_end_is_refused() {
    let file = patched(0x301, false, |body, data_start| {
        body[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        body[12..16].copy_from_slice(&(data_start + 8).to_le_bytes());
    });
    let err = load_igvm(&file).unwrap_err();
    assert!(matches!(err, IgvmError::Layout(_)), "{err}");
    assert!(
        err.to_string().contains("0xffffffffffffffff bytes"),
        "{err}"
    );
}

/// Found by fuzzing (`fuzz/`, target `igvm_load`): a page whose file offset lies before
/// the file data section made the igvm crate subtract with overflow (a panic in debug
/// builds, a wrapped offset in release ones).
#[test]
fn page_data_offset_before_the_file_data_is_refused() {
    let file = with_file_offset(0x302, |data_start| data_start - 8);
    let err = load_igvm(&file).unwrap_err();
    assert!(matches!(err, IgvmError::Layout(_)), "{err}");
    assert!(err.to_string().contains("outside the file data"), "{err}");
}

/// Found by fuzzing (`fuzz/ci.sh`, target `igvm_load`, with overflow checks): a parameter
/// area of zero bytes whose nonzero file offset lies before the file data section made the
/// igvm crate subtract with overflow (a panic in debug builds).
#[test]
fn empty_parameter_area_offset_before_the_file_data_is_refused() {
    let file = patched(0x301, false, |body, data_start| {
        body[0..8].copy_from_slice(&0u64.to_le_bytes());
        body[12..16].copy_from_slice(&(data_start - 8).to_le_bytes());
    });
    let err = load_igvm(&file).unwrap_err();
    assert!(matches!(err, IgvmError::Layout(_)), "{err}");
    assert!(err.to_string().contains("outside the file data"), "{err}");
}

/// The fuzzer's own input for the same bug, as the target fixes up its size and checksum:
/// a 60-byte file with one zero-byte parameter area at file offset 0x10.
#[test]
fn fuzzer_input_with_an_empty_parameter_area_before_the_data_is_refused() {
    let mut file = vec![
        0x49, 0x47, 0x56, 0x4d, 0x01, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x19, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x36, 0x00, 0x01, 0x03, 0x00, 0x00, 0x10, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x24, 0x10,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x23,
    ];
    assert_eq!(file.len(), 60);
    let len = file.len() as u32;
    file[16..20].copy_from_slice(&len.to_le_bytes());
    fix_checksum(&mut file);
    let err = load_igvm(&file).unwrap_err();
    assert!(matches!(err, IgvmError::Layout(_)), "{err}");
}

/// Found by fuzzing: igvm subtracts the file data start from a VP context's file offset
/// even when the offset is zero.
#[test]
fn vp_context_without_file_data_is_refused() {
    let err = load_igvm(&with_file_offset(0x304, |_| 0)).unwrap_err();
    assert!(matches!(err, IgvmError::Layout(_)), "{err}");
    assert!(err.to_string().contains("file offset 0x0"), "{err}");
}

/// Variable headers whose offset plus size passes 4 GiB made the igvm crate add with
/// overflow before it looked at anything else.
#[test]
fn variable_headers_past_the_file_end_are_refused() {
    let mut file = build(1, 0x10_0000);
    file[12..16].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let err = load_igvm(&file).unwrap_err();
    assert!(matches!(err, IgvmError::Layout(_)), "{err}");
    assert!(err.to_string().contains("run past"), "{err}");
}

/// One parameter area inserted many times would multiply its pages (up to 16 MiB of plan
/// pages per insert from a few bytes of file): a second insert of an area is refused. The
/// file is built with two areas, each inserted once, then the second insert is patched to
/// name the first area.
#[test]
fn a_parameter_area_inserted_twice_is_refused() {
    let mut directives = Vec::new();
    for index in 0..2 {
        directives.push(IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: 0x1000,
            parameter_area_index: index,
            initial_data: Vec::new(),
        });
        directives.push(IgvmDirectiveHeader::VpCount(IGVM_VHS_PARAMETER {
            parameter_area_index: index,
            byte_offset: 0,
        }));
        directives.push(IgvmDirectiveHeader::ParameterInsert(
            IGVM_VHS_PARAMETER_INSERT {
                gpa: 0x20_0000 + u64::from(index) * 0x10_0000,
                compatibility_mask: MASK,
                parameter_area_index: index,
            },
        ));
    }
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: 0xffff_f000,
        compatibility_mask: MASK,
        vp_index: 0,
        vmsa: bsp_vmsa(0x10_0000),
    });
    let mut bytes = serialized(directives);
    assert_eq!(load_igvm(&bytes).unwrap().parameter_areas.len(), 2);

    // The second PARAMETER_INSERT (type 0x303; area index at body offset 12) now names area 0.
    let (start, size) = (u32_at(&bytes, 8) as usize, u32_at(&bytes, 12) as usize);
    let mut at = start;
    let mut inserts = 0;
    while at < start + size {
        let (typ, len) = (u32_at(&bytes, at), u32_at(&bytes, at + 4) as usize);
        if typ == 0x303 {
            inserts += 1;
            if inserts == 2 {
                bytes[at + 8 + 12..at + 8 + 16].copy_from_slice(&0u32.to_le_bytes());
            }
        }
        at += 8 + len.next_multiple_of(8);
    }
    assert_eq!(inserts, 2);
    fix_checksum(&mut bytes);
    let err = load_igvm(&bytes).unwrap_err();
    println!("{err}");
    assert!(
        matches!(
            err,
            IgvmError::BadParameterArea { index: 0, .. } | IgvmError::Parse(_)
        ),
        "{err}"
    );
}
