//! The floor program boots both tiny guests under real KVM: the harness's baseline works and
//! the guests are what every VMM in the comparison is given.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use veil_benches::guest::{self, TinyGuest};

fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping: cannot open /dev/kvm ({e})");
            false
        }
    }
}

fn floor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvm-floor"))
}

#[test]
fn exit_guest_prints_its_line_and_resets() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = guest::build(TinyGuest::Exit, dir.path()).unwrap();
    let out = floor().arg(&elf).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", guest::EXIT_GREETING)
    );
}

#[test]
fn idle_guest_prints_its_line_and_stays_up_until_signalled() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = guest::build(TinyGuest::Idle, dir.path()).unwrap();
    let mut child = floor()
        .arg(&elf)
        .args(["--mem-mib", "64"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8];
    while !line.ends_with(b"\n") && stdout.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
    }
    assert_eq!(line, format!("{}\n", guest::IDLE_GREETING).as_bytes());
    // Still running after its line: the halted guest keeps the VM up.
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "floor ended on its own"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn rejects_what_is_not_a_pvh_elf() {
    if !kvm_usable() {
        return;
    }
    let out = floor()
        .arg(Path::new(env!("CARGO_BIN_EXE_kvm-floor")))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Xen PVH entry note"), "{err}");
}
