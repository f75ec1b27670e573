//! Every bad input is refused before the guest runs, with a message naming it, exit status
//! 1, no panic, and nothing left behind.

mod common;

use std::path::Path;

use common::{assert_refused, veil};
use veil_tests::Guest;

fn guest() -> &'static str {
    Guest::BootInfo.path().to_str().unwrap()
}

#[test]
fn missing_kernel() {
    let out = veil(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_refused(
        &out,
        &["cannot open kernel /nonexistent/vmlinux", "No such file"],
    );
}

#[test]
fn corrupt_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let out = veil(&["run", "--kernel", junk.to_str().unwrap()]);
    assert_refused(
        &out,
        &[
            junk.to_str().unwrap(),
            "neither an ELF vmlinux nor a bzImage",
        ],
    );

    // A real guest cut short inside its program headers / segment data.
    let bytes = std::fs::read(guest()).unwrap();
    for cut in [40, 100, 0x1100] {
        let truncated = dir.path().join(format!("truncated{cut}"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let out = veil(&["run", "--kernel", truncated.to_str().unwrap()]);
        assert_refused(
            &out,
            &[truncated.to_str().unwrap(), "not a loadable x86_64 kernel"],
        );
    }

    // A bzImage header that claims the 64-bit protocol but whose payload is missing.
    let mut fake = vec![0u8; 0x400];
    fake[0x1f1] = 1; // setup_sects
    fake[0x202..0x206].copy_from_slice(b"HdrS");
    let bz = dir.path().join("bzImage");
    std::fs::write(&bz, &fake).unwrap();
    let out = veil(&["run", "--kernel", bz.to_str().unwrap()]);
    assert_refused(&out, &[bz.to_str().unwrap()]);
}

#[test]
fn memory_too_small_for_kernel_and_initrd() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![0u8; 6 << 20]).unwrap();
    let out = veil(&[
        "run",
        "--kernel",
        guest(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem-mib",
        "4",
    ]);
    assert_refused(
        &out,
        &[
            "too small for kernel + initrd",
            "6291456-byte initrd",
            "--mem-mib",
        ],
    );

    let out = veil(&["run", "--kernel", guest(), "--mem-mib", "2"]);
    assert_refused(&out, &["memory size 2 MiB is out of range"]);

    let out = veil(&[
        "run",
        "--kernel",
        guest(),
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_refused(&out, &["cannot open initrd /nonexistent/initrd"]);
}

#[test]
fn command_line_too_long() {
    let long = format!("console=ttyS0 {}", "x".repeat(3000));
    let out = veil(&["run", "--kernel", guest(), "--cmdline", &long]);
    assert_refused(&out, &["command line is 3014 bytes long", "at most 2047"]);
}

#[test]
fn vcpu_count_out_of_range() {
    for n in ["0", "255"] {
        let out = veil(&["run", "--kernel", guest(), "--vcpus", n]);
        assert_refused(&out, &[&format!("vCPU count {n} is out of range")]);
    }
}

#[test]
fn unknown_cpu_template() {
    let out = veil(&["run", "--kernel", guest(), "--cpu-template", "t9"]);
    assert_refused(&out, &["unknown CPU template 't9'", "host, soft-kvm"]);
}

#[test]
fn no_kvm_device() {
    let out = veil(&[
        "run",
        "--kernel",
        guest(),
        "--kvm-device",
        "/nonexistent/kvm",
    ]);
    assert_refused(&out, &["/nonexistent/kvm does not exist", "no KVM"]);
}

#[test]
fn no_permission_on_kvm() {
    // As root, drop to `nobody`; otherwise point at a device file we may not open.
    // SAFETY: geteuid has no preconditions.
    let out = if unsafe { libc::geteuid() } == 0 {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                common::VEIL,
                "run",
                "--kernel",
                guest(),
            ])
            .output()
            .expect("setpriv (util-linux) runs")
    } else {
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("kvm");
        std::fs::write(&locked, b"").unwrap();
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        veil(&[
            "run",
            "--kernel",
            guest(),
            "--kvm-device",
            locked.to_str().unwrap(),
        ])
    };
    assert_refused(&out, &["permission denied opening", "kvm"]);
}

#[test]
fn refused_runs_leave_no_console_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let out = veil(&[
        "run",
        "--kernel",
        "/nonexistent/vmlinux",
        "--console",
        log.to_str().unwrap(),
    ]);
    assert_refused(&out, &["/nonexistent/vmlinux"]);
    assert!(
        !Path::new(&log).exists(),
        "a refused run created its console file"
    );

    let out = veil(&[
        "run",
        "--kernel",
        guest(),
        "--console",
        "/nonexistent/dir/console.log",
    ]);
    assert_refused(
        &out,
        &["cannot open console file /nonexistent/dir/console.log"],
    );
}

#[test]
fn help_lists_every_option() {
    let out = veil(&["run", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = common::stdout(&out);
    for opt in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--mem-mib",
        "--vcpus",
        "--console",
        "--cpu-template",
    ] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn bad_device_options() {
    let out = veil(&[
        "run",
        "--kernel",
        guest(),
        "--disk",
        "/nonexistent/disk.img",
    ]);
    assert_refused(
        &out,
        &["disk 0: cannot open disk image /nonexistent/disk.img"],
    );

    let out = veil(&["run", "--kernel", guest(), "--disk", "a.img,rw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("invalid --disk 'a.img,rw': options are `ro` and `id=NAME`")
    );

    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let out = veil(&[
        "run",
        "--kernel",
        guest(),
        "--vsock-cid",
        "2",
        "--vsock-uds",
        uds.to_str().unwrap(),
    ]);
    assert_refused(&out, &["guest CID 2 is reserved"]);
    assert!(!uds.exists(), "a refused vsock left its socket behind");

    let out = veil(&["run", "--kernel", guest(), "--vsock-cid", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).contains("--vsock-uds"));

    // 19 drives with 36-37 byte announcements each push a 1500-byte command line over the limit.
    let img = dir.path().join("d.img");
    std::fs::write(&img, vec![0u8; 512]).unwrap();
    let cmdline = "x".repeat(1500);
    let mut args = vec!["run", "--kernel", guest(), "--cmdline", &cmdline];
    for _ in 0..19 {
        args.extend(["--disk", img.to_str().unwrap()]);
    }
    assert_refused(
        &veil(&args),
        &["bytes announcing the virtio devices", "at most 2047"],
    );
}

#[test]
fn bad_net_options() {
    let out = veil(&["run", "--kernel", guest(), "--net", "tap=veilnosuchtap"]);
    assert_refused(
        &out,
        &[
            "network device 0",
            "tap \"veilnosuchtap\" does not exist in the VMM's network namespace",
        ],
    );

    for (spec, message) in [
        (
            "tap=t0,mac=02:00:00:00:00",
            "MAC address \"02:00:00:00:00\"",
        ),
        ("tap=t0,mac=01:00:00:00:00:01", "is not a unicast address"),
        ("mac=02:00:00:00:00:01", "tap=NAME is required"),
        ("tap=t0,mtu=20", "MTU 20 is outside"),
    ] {
        let out = veil(&["run", "--kernel", guest(), "--net", spec]);
        assert_ne!(out.status.code(), Some(0), "{spec} accepted");
        let stderr = common::stderr(&out);
        assert!(stderr.contains(message), "{spec}: {stderr}");
    }
}
