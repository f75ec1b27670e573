//! `veil igvm build`'s function: the line it prints and how it names bad inputs. What the
//! file holds is checked in veil-snp's `tests/igvm_build.rs`.

use std::path::{Path, PathBuf};

use veil_cli::snp::{run_igvm_build, CliError, IgvmBuildArgs};
use veil_snp::igvm::load_igvm;

const CMDLINE: &str = "console=ttyS0 acpi=off";

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn args(
    dir: &Path,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: &str,
    mem_mib: u64,
) -> IgvmBuildArgs {
    IgvmBuildArgs {
        kernel,
        initrd,
        cmdline: cmdline.to_string(),
        mem_mib,
        policy: "0x30000".into(),
        c_bit: 51,
        output: dir.join("guest.igvm"),
    }
}

#[test]
fn writes_the_file_and_names_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    // A test guest: a small ELF kernel.
    let kernel = veil_tests::Guest::BootInfo.path().to_path_buf();
    let initrd = write(dir.path(), "initrd", &[0xa5; 10_000]);
    let line =
        run_igvm_build(&args(dir.path(), kernel.clone(), Some(initrd), CMDLINE, 64)).unwrap();
    let out = dir.path().join("guest.igvm");
    let plan = load_igvm(&std::fs::read(&out).unwrap()).unwrap();
    assert!(
        line.starts_with(&format!(
            "{}: {} measured bytes",
            out.display(),
            plan.measured_bytes()
        )),
        "{line}"
    );
    assert!(line.contains("1 SECRETS, 1 CPUID; entry 0x"), "{line}");

    let not_elf = write(dir.path(), "bzImage", b"MZ this is not an ELF kernel");
    let err = run_igvm_build(&args(dir.path(), not_elf, None, CMDLINE, 64))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bzImage") && err.contains("not an ELF"),
        "{err}"
    );

    let long = "x".repeat(3000);
    let err = run_igvm_build(&args(dir.path(), kernel.clone(), None, &long, 64))
        .unwrap_err()
        .to_string();
    assert!(err.contains("3000 bytes") && err.contains("2047"), "{err}");

    let big = write(dir.path(), "big-initrd", &vec![1u8; 40 << 20]);
    let err =
        run_igvm_build(&args(dir.path(), kernel.clone(), Some(big), CMDLINE, 32)).unwrap_err();
    assert!(matches!(err, CliError::IgvmBuild { .. }));
    let err = err.to_string();
    assert!(
        err.contains("initrd is 41943040 bytes") && err.contains("--mem-mib 32"),
        "{err}"
    );

    let err = run_igvm_build(&args(dir.path(), kernel.clone(), None, CMDLINE, 16 << 11))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--mem-mib 32768"), "{err}");
    let err = run_igvm_build(&IgvmBuildArgs {
        policy: "0xb0000".into(),
        ..args(dir.path(), kernel, None, CMDLINE, 64)
    })
    .unwrap_err()
    .to_string();
    assert!(err.to_lowercase().contains("debug"), "{err}");
}
