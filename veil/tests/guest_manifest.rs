//! `veil guest manifest` and `veil guest verify-manifest`: a synthetic pod set, one changed
//! byte per image, malformed manifests, and the project's published pod set
//! (`guest/build-pod.sh`): one changed byte of the agent changes the launch digest, and the
//! kernel carries its own .config, so a changed config line changes the kernel image.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_refused, stderr, stdout, veil};

const IMAGES: [(&str, &str); 5] = [
    ("vmlinux", "vmlinux"),
    ("kernel-config", "kernel.config"),
    ("agent", "veil-agent"),
    ("initramfs", "initramfs.cpio.gz"),
    ("igvm", "pod.igvm"),
];
const CMDLINE: &str = "console=ttyS0 acpi=off";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A minimal x86_64 ELF: one PT_LOAD of `text` at 16 MiB.
fn tiny_elf(text: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 64 + 56];
    out[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&1u16.to_le_bytes());
    for (at, v) in [
        (0, 1u64 | (5 << 32)),
        (8, 120),
        (24, 0x100_0000),
        (32, text.len() as u64),
        (40, 0x4000),
    ] {
        out[64 + at..64 + at + 8].copy_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(text);
    out
}

fn igvm_build(dir: &Path, cmdline: &str, mem_mib: &str) -> Output {
    veil(&[
        "igvm",
        "build",
        "--kernel",
        s(&dir.join("vmlinux")),
        "--initrd",
        s(&dir.join("initramfs.cpio.gz")),
        "--cmdline",
        cmdline,
        "--mem-mib",
        mem_mib,
        "-o",
        s(&dir.join("pod.igvm")),
    ])
}

/// A pod set like build-pod.sh's, from synthetic images, with its manifest.
fn synthetic_pod(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("vmlinux"), tiny_elf(&[0x90; 0x1800])).unwrap();
    std::fs::write(dir.join("kernel.config"), "CONFIG_64BIT=y\n".repeat(40)).unwrap();
    std::fs::write(dir.join("veil-agent"), [0x7f; 5000]).unwrap();
    std::fs::write(dir.join("initramfs.cpio.gz"), [0x1f; 7000]).unwrap();
    let out = igvm_build(dir, CMDLINE, "32");
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = dir.join("manifest.json");
    let mut args = vec![
        "guest".to_string(),
        "manifest".into(),
        "-o".into(),
        s(&manifest).into(),
        "--cmdline".into(),
        CMDLINE.into(),
        "--mem-mib".into(),
        "32".into(),
        "--input".into(),
        "rustc=test".into(),
    ];
    for (name, file) in IMAGES {
        args.extend(["--image".into(), format!("{name}={file}")]);
    }
    let out = veil(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    manifest
}

fn verify(manifest: &Path) -> Output {
    veil(&["guest", "verify-manifest", s(manifest)])
}

fn mismatches(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter(|l| l.starts_with("MISMATCH"))
        .map(str::to_string)
        .collect()
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Copies a pod set (the files the manifest names and the manifest) into a new directory.
fn copy_pod(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (_, file) in IMAGES {
        std::fs::copy(from.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::copy(from.join("manifest.json"), dir.path().join("manifest.json")).unwrap();
    dir
}

#[test]
fn synthetic_pod_verifies_and_each_changed_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = synthetic_pod(dir.path());
    let out = verify(&manifest);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // 5 images, the IGVM rebuilt from its inputs, the policy, 9 launch digests.
    assert!(
        stdout(&out).ends_with("all 16 checks match\n"),
        "{}",
        stdout(&out)
    );

    for (name, file) in IMAGES {
        let copy = copy_pod(dir.path());
        let path = copy.path().join(file);
        // In the IGVM, a byte of the initrd's page data (its headers are checksummed).
        let at = match name {
            "igvm" => std::fs::read(&path)
                .unwrap()
                .windows(64)
                .position(|w| w == [0x1f; 64])
                .unwrap(),
            _ => 200,
        };
        flip_byte(&path, at);
        let out = verify(&copy.path().join("manifest.json"));
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stdout(&out));
        let bad = mismatches(&out);
        assert!(
            bad[0].starts_with(&format!("MISMATCH  image {name} (")),
            "{name}: {bad:?}"
        );
        let expected = match name {
            // The IGVM is no longer what its inputs build (kernel, initrd) or it is not
            // those inputs' build and measures differently (igvm); config and agent are
            // hashed only.
            "vmlinux" | "initramfs" => 2,
            "igvm" => 2 + 9,
            _ => 1,
        };
        assert_eq!(bad.len(), expected, "{name}: {bad:?}");
    }
}

#[test]
fn a_changed_manifest_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = synthetic_pod(dir.path());
    let text = std::fs::read_to_string(&manifest).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let digest = json["launch_digests"][4]["measurement"].as_str().unwrap();
    let other = if digest.starts_with('0') { "1" } else { "0" };
    let changed = text.replacen(digest, &format!("{other}{}", &digest[1..]), 1);
    std::fs::write(&manifest, changed).unwrap();
    let out = verify(&manifest);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        mismatches(&out).len(),
        1,
        "only the changed digest: {}",
        stdout(&out)
    );
    assert!(
        mismatches(&out)[0].contains("launch digest, 2 vCPU(s), EPYC-Genoa"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn missing_or_malformed_manifests_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.json");
    assert_refused(&verify(&missing), &[s(&missing), "No such file"]);

    let manifest = synthetic_pod(dir.path());
    let good = std::fs::read_to_string(&manifest).unwrap();
    let cases = [
        ("{", "not a valid manifest"),
        ("[]", "not a valid manifest"),
        (
            &good.replace("veil-guest-manifest/1", "other/9"),
            "format \"other/9\"",
        ),
        (
            &good.replacen("\"sha256\": \"", "\"sha256\": \"zz", 1),
            "sha256 is not 64",
        ),
        (
            &good.replacen("\"file\": \"pod.igvm\"", "\"file\": \"../pod.igvm\"", 1),
            "must be relative",
        ),
        (
            &good.replacen("\"vcpus\": 1,", "\"vcpus\": 1, \"extra\": 2,", 1),
            "unknown field",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(&manifest, text).unwrap();
        assert_refused(&verify(&manifest), &[s(&manifest), needle]);
    }
}

/// The published pod set, built by guest/build-pod.sh. Required under `CI=true`.
fn project_pod() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-pod");
    if dir.join("manifest.json").exists() {
        return Some(dir);
    }
    let why = format!(
        "{} has no manifest.json: run guest/build-pod.sh",
        dir.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("skipping: {why}");
    None
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Rebuilds the IGVM in `dir` the way the manifest says it was built.
fn rebuild_igvm(dir: &Path) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let recipe = &json["igvm"];
    let mem = recipe["mem_mib"].to_string();
    let out = igvm_build(dir, recipe["cmdline"].as_str().unwrap(), &mem);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn project_pod_verifies_and_one_agent_byte_changes_the_launch_digest() {
    let Some(pod) = project_pod() else { return };
    let out = verify(&pod.join("manifest.json"));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // One byte of the agent, packed and built the way build-pod.sh does it.
    let copy = copy_pod(&pod);
    let agent = copy.path().join("veil-agent");
    let len = std::fs::metadata(&agent).unwrap().len() as usize;
    flip_byte(&agent, len / 2);
    let pack = Command::new(repo_root().join("guest/build-initramfs.sh"))
        .args([
            "--pack",
            s(&agent),
            s(&copy.path().join("initramfs.cpio.gz")),
        ])
        .output()
        .unwrap();
    assert!(pack.status.success(), "{}", stderr(&pack));
    rebuild_igvm(copy.path());

    let out = verify(&copy.path().join("manifest.json"));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let bad = mismatches(&out);
    for name in ["agent", "initramfs", "igvm"] {
        assert!(
            bad.iter()
                .any(|l| l.starts_with(&format!("MISMATCH  image {name} ("))),
            "{name} not named: {bad:?}"
        );
    }
    // Every launch digest changed; kernel, config and the IGVM's recipe still match.
    assert_eq!(
        bad.iter().filter(|l| l.contains("launch digest")).count(),
        9,
        "{bad:?}"
    );
    assert_eq!(bad.len(), 3 + 9, "{bad:?}");
}

/// The kernel's .config as embedded between IKCFG_ST and IKCFG_ED (gzip).
fn embedded_config(vmlinux: &[u8]) -> (usize, Vec<u8>) {
    let find = |needle: &[u8]| vmlinux.windows(needle.len()).position(|w| w == needle);
    let start = find(b"IKCFG_ST").expect("vmlinux embeds its config (CONFIG_IKCONFIG)") + 8;
    let end = start + find(b"IKCFG_ED").unwrap() - start;
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("config.gz");
    std::fs::write(&gz, &vmlinux[start..end]).unwrap();
    let out = Command::new("gzip").arg("-dc").arg(&gz).output().unwrap();
    assert!(out.status.success(), "gzip -dc: {}", stderr(&out));
    (start, out.stdout)
}

#[test]
fn project_kernel_embeds_its_config_so_a_config_line_changes_the_digest() {
    let Some(pod) = project_pod() else { return };
    let vmlinux = std::fs::read(pod.join("vmlinux")).unwrap();
    let (at, config) = embedded_config(&vmlinux);
    // The kernel carries the very .config it was built with: changing any line of it
    // changes these bytes of vmlinux.
    assert_eq!(config, std::fs::read(pod.join("kernel.config")).unwrap());

    // Those bytes are measured: changing one changes the launch digest, and verify names
    // the kernel.
    let copy = copy_pod(&pod);
    flip_byte(&copy.path().join("vmlinux"), at + 100);
    rebuild_igvm(copy.path());
    let out = verify(&copy.path().join("manifest.json"));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let bad = mismatches(&out);
    assert!(bad[0].starts_with("MISMATCH  image igvm ("), "{bad:?}");
    assert!(
        bad.iter()
            .any(|l| l.starts_with("MISMATCH  image vmlinux (")),
        "{bad:?}"
    );
    assert_eq!(
        bad.iter().filter(|l| l.contains("launch digest")).count(),
        9,
        "{bad:?}"
    );
}

#[test]
fn bad_manifest_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_pod(dir.path());
    let out_file = dir.path().join("m.json");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "guest",
            "manifest",
            "-o",
            out_file.to_str().unwrap(),
            "--cmdline",
            CMDLINE,
            "--mem-mib",
            "32",
        ];
        args.extend_from_slice(extra);
        veil(&args)
    };
    assert_refused(
        &run(&["--image", "vmlinux"]),
        &["\"vmlinux\" is not NAME=FILE"],
    );
    assert_refused(
        &run(&["--image", "vmlinux=vmlinux", "--input", "rustc"]),
        &["\"rustc\" is not KEY=VALUE"],
    );
    assert_refused(
        &run(&[
            "--image",
            "vmlinux=vmlinux",
            "--image",
            "initramfs=initramfs.cpio.gz",
        ]),
        &["IGVM image \"igvm\" is not among the images given"],
    );
    assert_refused(&run(&["--image", "igvm=missing.igvm"]), &["missing.igvm"]);
    assert!(!out_file.exists(), "nothing written for refused input");
}
