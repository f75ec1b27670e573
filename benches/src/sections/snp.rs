//! SEV-SNP figures that need no SNP hardware: the launch digest's throughput (veil_snp's
//! `LaunchDigest`, in this process) against `openssl speed -evp sha384` on 4 KiB blocks in the
//! same run; the measured bytes of the demo guest and of an IGVM of the project's kernel; and
//! the software firmware model's full launch sequence as `veil run` performs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use veil_snp::LaunchDigest;

use crate::bench::Bench;
use crate::demo_size;
use crate::model_launch;
use crate::openssl_speed;
use crate::report::Section;
use crate::stats::median_ratio;

const TITLE: &str = "SNP: launch digest and launch sequence";
const MIB: f64 = (1 << 20) as f64;
const PAGE: usize = 4096;
/// First guest-physical address measured (where a kernel's pages would start).
const GPA: u64 = 0x10_0000;
/// Guest memory of the kernel IGVM and of its model launch.
const IGVM_MEM_MIB: u64 = 256;
const IGVM_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1";
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(120);

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Pages per call on one thread: veil_snp spreads a call over all cores from 256 pages on
/// (`PARALLEL_MIN_PAGES` in snp/src/digest.rs), so calls stay just below that. Not one page per
/// call: each call asks `available_parallelism()`, which reads cgroup files; one page per
/// call measured 83 MiB/s here against 166 MiB/s in calls of 255 pages.
const ONE_THREAD_CALL_PAGES: usize = 255;

/// The launch digest of `data` as NORMAL pages with the hashing on this thread. Returns
/// (MiB per wall second, MiB per CPU second of this thread).
fn digest_one_thread(data: &[u8]) -> (f64, f64) {
    let mut ld = LaunchDigest::new();
    let (wall, cpu) = (Instant::now(), thread_cpu_seconds());
    for (i, chunk) in data.chunks(ONE_THREAD_CALL_PAGES * PAGE).enumerate() {
        let gpa = GPA + (i * ONE_THREAD_CALL_PAGES * PAGE) as u64;
        ld.update_normal(gpa, chunk)
            .expect("page-aligned range below the GPA limit");
    }
    let (wall, cpu) = (wall.elapsed().as_secs_f64(), thread_cpu_seconds() - cpu);
    std::hint::black_box(ld.bytes());
    let mib = data.len() as f64 / MIB;
    (mib / wall, mib / cpu)
}

/// The launch digest of `data` in one call: pages hashed on every core, then chained.
fn digest_all_cores(data: &[u8]) -> f64 {
    let mut ld = LaunchDigest::new();
    let wall = Instant::now();
    ld.update_normal(GPA, data)
        .expect("page-aligned range below the GPA limit");
    let wall = wall.elapsed().as_secs_f64();
    std::hint::black_box(ld.bytes());
    data.len() as f64 / MIB / wall
}

fn digest_throughput(b: &Bench, section: &mut Section) {
    let data: Vec<u8> = (0..b.plan.digest_mib << 20)
        .map(|i| (i * 131 % 251) as u8)
        .collect();
    let (mut one_wall, mut one_cpu, mut all, mut openssl) = (vec![], vec![], vec![], vec![]);
    let mut openssl_error = None;
    for _ in 0..b.plan.digest_rounds {
        let (w, c) = digest_one_thread(&data);
        one_wall.push(w);
        one_cpu.push(c);
        all.push(digest_all_cores(&data));
        match openssl_speed::measure(1) {
            Ok(bytes_s) => openssl.push(bytes_s / MIB),
            Err(e) => {
                openssl_error.get_or_insert(e);
            }
        }
    }
    let cpu = section.figure(
        "launch digest, NORMAL pages, 1 thread, per CPU-second",
        "MiB/s",
        &one_cpu,
    );
    let wall = section.figure(
        "launch digest, NORMAL pages, 1 thread, wall",
        "MiB/s",
        &one_wall,
    );
    let cores = section.figure(
        format!("launch digest, NORMAL pages, all {} cores, wall", b.cores),
        "MiB/s",
        &all,
    );
    let ssl = section.figure(
        "openssl speed -evp sha384 -bytes 4096, one core (per user CPU-second)",
        "MiB/s",
        &openssl,
    );
    section.ratio_at_least(
        "launch digest 1 thread / openssl sha384, per CPU-second (medians)",
        median_ratio(cpu.as_ref(), ssl.as_ref()),
        0.9,
    );
    section.ratio(
        format!(
            "launch digest all {} cores / 1 thread, wall (medians)",
            b.cores
        ),
        median_ratio(cores.as_ref(), wall.as_ref()),
        None,
    );
    section.note(format!(
        "{} rounds, each: {} MiB digested on one thread (calls of {ONE_THREAD_CALL_PAGES} pages), the same in one call on all cores, then `openssl speed -evp sha384 -bytes 4096 -seconds 1` (which divides by user CPU time); the digest includes the serial 112-byte PAGE_INFO chain",
        b.plan.digest_rounds, b.plan.digest_mib
    ));
    if let Some(e) = openssl_error {
        section.fail(format!("openssl speed: {e}"));
    }
}

fn demo_bytes(b: &Bench, section: &mut Section) {
    match demo_size::measure(&b.tools.veil) {
        Ok(code) => {
            section.figure("demo guest: code", "bytes", &[code as f64]);
            section.figure(
                "demo guest: measured NORMAL bytes if wrapped in an IGVM",
                "bytes",
                &[demo_size::page_bytes(code) as f64],
            );
            section.note(format!(
                "demo guest size: {} minus {} in `nm` of the veil binary; wrapped in an IGVM its code would be one PAGE_DATA range, measured in whole 4 KiB pages, plus one VMSA page per vCPU (not counted)",
                demo_size::END,
                demo_size::START
            ));
        }
        Err(e) => section.fail(format!("demo guest size: {e}")),
    }
}

/// Whether `veil --help` lists the `igvm` subcommand.
fn veil_has_igvm_build(veil: &Path) -> bool {
    Command::new(veil)
        .arg("--help")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim_start().starts_with("igvm "))
        })
        .unwrap_or(false)
}

/// The initramfs next to the kernel build, if one was built.
fn find_initramfs(target: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(target.join("guest-initramfs"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains("cpio"))
        })
        .collect();
    files.sort();
    files.into_iter().next()
}

fn kernel_igvm(b: &Bench, section: &mut Section) {
    const BYTES: &str = "kernel IGVM: measured bytes";
    const LAUNCH: &str = "model launch sequence: spawn -> digest line";
    if !veil_has_igvm_build(&b.tools.veil) {
        let why = "this veil binary has no `igvm build` subcommand (`veil --help`), so there is no IGVM of the project's kernel to measure or launch";
        section.skip(BYTES, why);
        section.skip(LAUNCH, why);
        return;
    }
    if !b.vmlinux.is_file() {
        let why = format!(
            "no guest kernel at {} (guest/build-kernel.sh, or --vmlinux)",
            b.vmlinux.display()
        );
        section.skip(BYTES, &why);
        section.skip(LAUNCH, why);
        return;
    }
    let Ok(dir) = tempfile::tempdir() else {
        section.fail("cannot create a scratch directory");
        return;
    };
    let igvm = dir.path().join("kernel.igvm");
    let initrd = b
        .vmlinux
        .parent()
        .and_then(Path::parent)
        .and_then(find_initramfs);
    let mut c = Command::new(&b.tools.veil);
    c.args(["igvm", "build", "--kernel"])
        .arg(&b.vmlinux)
        .args(["--cmdline", IGVM_CMDLINE, "--mem-mib"])
        .arg(IGVM_MEM_MIB.to_string())
        .arg("-o")
        .arg(&igvm);
    if let Some(initrd) = &initrd {
        c.arg("--initrd").arg(initrd);
    }
    match c.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            section.fail(format!(
                "veil igvm build failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return;
        }
        Err(e) => {
            section.fail(format!("cannot run veil igvm build: {e}"));
            return;
        }
    }
    let plan = std::fs::read(&igvm)
        .map_err(|e| e.to_string())
        .and_then(|bytes| veil_snp::igvm::load_igvm(&bytes).map_err(|e| e.to_string()));
    let measured = match plan {
        Ok(plan) => plan.measured_bytes(),
        Err(e) => {
            section.fail(format!("the built IGVM does not load: {e}"));
            return;
        }
    };
    section.figure(BYTES, "bytes", &[measured as f64]);
    section.note(format!(
        "kernel IGVM: `veil igvm build --kernel {} {}--mem-mib {IGVM_MEM_MIB}`; measured bytes from veil_snp's launch plan of that file",
        b.vmlinux.display(),
        initrd
            .as_ref()
            .map_or("(no initramfs in target/guest-initramfs) ".to_string(), |p| format!(
                "--initrd {} ",
                p.display()
            ))
    ));
    let mut times = Vec::new();
    for _ in 0..b.plan.snp_launches {
        match model_launch::timed_launch(&b.tools.veil, &igvm, IGVM_MEM_MIB, LAUNCH_TIMEOUT) {
            Ok((ms, d)) if d.measured_bytes == measured => times.push(ms),
            Ok((_, d)) => {
                section.fail(format!(
                    "the model launch measured {} bytes, the IGVM's plan {measured}",
                    d.measured_bytes
                ));
                break;
            }
            Err(e) => {
                section.fail(format!("model launch: {e}"));
                break;
            }
        }
    }
    section.figure(LAUNCH, "ms", &times);
    section.note("model launch: `veil run --igvm F --snp-firmware model`, from spawn to veil's digest line on stderr (LAUNCH_START, every LAUNCH_UPDATE, LAUNCH_FINISH in the insecure software model), then the VM is killed");
}

pub fn run(b: &Bench) -> Section {
    let mut section = Section::new(TITLE);
    digest_throughput(b, &mut section);
    demo_bytes(b, &mut section);
    kernel_igvm(b, &mut section);
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_and_all_cores_digest_the_same_pages() {
        // The two timed paths must measure the same thing: equal digests.
        let data: Vec<u8> = (0..PAGE * 300).map(|i| (i * 7 % 253) as u8).collect();
        let mut by_page = LaunchDigest::new();
        for (i, page) in data.chunks_exact(PAGE).enumerate() {
            by_page
                .update_normal(GPA + (i * PAGE) as u64, page)
                .unwrap();
        }
        let mut all = LaunchDigest::new();
        all.update_normal(GPA, &data).unwrap();
        assert_eq!(by_page.bytes(), all.bytes());
        // The timed one-thread path: calls of ONE_THREAD_CALL_PAGES pages.
        let mut ld = LaunchDigest::new();
        for (i, chunk) in data.chunks(ONE_THREAD_CALL_PAGES * PAGE).enumerate() {
            let gpa = GPA + (i * ONE_THREAD_CALL_PAGES * PAGE) as u64;
            ld.update_normal(gpa, chunk).unwrap();
        }
        assert_eq!(ld.bytes(), all.bytes());
    }

    #[test]
    fn initramfs_is_found_only_when_built() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_initramfs(dir.path()), None);
        let d = dir.path().join("guest-initramfs");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("README"), "").unwrap();
        assert_eq!(find_initramfs(dir.path()), None);
        std::fs::write(d.join("initramfs.cpio.gz"), "").unwrap();
        assert_eq!(
            find_initramfs(dir.path()),
            Some(d.join("initramfs.cpio.gz"))
        );
    }
}
