//! The shim with real VM sandboxes: inside the nested harness's L1 (a hardware-style KVM, see
//! `veil_tests::nested`), Debian's containerd and runc, the shim and `veil` VMs booting the
//! project's kernel and initramfs run the same `ctr` and CRI scenarios as the process
//! sandbox does on the host.

mod common;

use std::time::Duration;

use common::*;
use veil_tests::nested::run_test_in_l1;

/// Builds, on the host (L1 sees the workspace read-only), the binaries the shim finds next
/// to itself: `veil` for the jailed VMs (the default) and the agent its config names.
fn build_binaries() {
    veil_binary();
    agent_binary();
}

/// containerd whose shim makes VM sandboxes from the project's guest kernel and initramfs.
fn containerd_with_vm_sandboxes() -> Containerd {
    let kernel = veil_tests::guest_kernel("vmlinux");
    // This checkout's initramfs (its agent), also when target/guest-kernel is a link to
    // another checkout's kernel.
    let initrd = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest-initramfs/initramfs.cpio.gz");
    assert!(
        initrd.is_file(),
        "{} is missing: run guest/build-initramfs.sh",
        initrd.display()
    );
    // Under L1's emulation the pod guest takes 15-20 s from spawn to a serving agent on this
    // machine kind when it is busy (with or without the jail): 20 s is too tight.
    Containerd::start_with_shim_config(
        "sandbox = \"vm\"\nagent_start_timeout_secs = 60",
        &format!(
            "[vm]\nkernel = \"{}\"\ninitrd = \"{}\"\nvcpus = 2\nmemory_mib = 512\n",
            kernel.display(),
            initrd.display()
        ),
    )
}

#[test]
fn vm_sandboxes_run_ctr_echo_exit_code_stdin_exec_and_kill() {
    build_binaries();
    if !run_test_in_l1(
        "vm_sandboxes_run_ctr_echo_exit_code_stdin_exec_and_kill",
        Duration::from_secs(1800),
        &[],
    ) {
        return;
    }
    require_host!();
    let c = containerd_with_vm_sandboxes();
    ctr::echo_prints_hello(&c);
    ctr::exit_code_reaches_ctr(&c);
    ctr::cat_echoes_stdin(&c);
    ctr::terminal_has_ctr_size(&c);
    ctr::exec_runs_a_second_process_and_kill_stops_the_first(&c);
    the_vm_runs_in_a_jail(&c);
    killing_the_vmm_ends_the_task_with_an_error_status(&c);
}

/// A VM sandbox's VMM is jailed (the default): `veil run --jail`'s only child runs as
/// `nobody` with no capabilities, `no_new_privs`, seccomp on every thread and an empty root.
fn the_vm_runs_in_a_jail(c: &Containerd) {
    let mut run = c.spawn_ctr_run(
        "jailed1",
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; echo ready; while :; do sleep 1; done",
        ],
        false,
    );
    let _rest = c.read_until_line(&mut run, "ready");
    let vmm = jailed_vmm(c);
    for task in std::fs::read_dir(format!("/proc/{vmm}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
        for set in ["CapPrm:", "CapEff:", "CapBnd:"] {
            assert_eq!(field(set), "0000000000000000", "{set} {status}");
        }
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
        assert_eq!(field("Seccomp:"), "2", "{status}");
    }
    let root = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .count();
    assert_eq!(root, 0, "the jail's root is not empty");
    let kill = c
        .ctr_cmd(NAMESPACE)
        .args(["task", "kill", "jailed1"])
        .output()
        .unwrap();
    assert!(kill.status.success(), "{kill:?}");
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{}", c.log_text());
    c.assert_clean(&["jailed1"]);
}

/// Two CRI pods in VM sandboxes, one after the other: two containers sharing one pod VM, then
/// a container the guest's OOM killer kills (its cgroup v2 memory.events), reported through CRI
/// as `OOMKilled`.
/// The pid of the one sandbox's jailed VMM. There are two `veil run --jail` processes: the
/// relay outside, and the jailed VMM, its only child (a fork: the same command line).
fn jailed_vmm(c: &Containerd) -> i32 {
    let veils = c.our_processes("veil");
    assert_eq!(veils.len(), 2, "veil processes: {veils:?}");
    let children = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
    };
    let relay = *veils
        .iter()
        .find(|&&pid| !children(pid).trim().is_empty())
        .expect("no relay");
    let vmm: i32 = children(relay).trim().parse().expect("one child");
    assert!(veils.contains(&vmm), "{veils:?}");
    vmm
}

/// A VMM killed mid-run (SIGKILL of the jailed `veil`) ends the sandbox: the task exits with
/// the sandbox error status that ctr reports, the shim says why, and nothing is left behind.
fn killing_the_vmm_ends_the_task_with_an_error_status(c: &Containerd) {
    let mut run = c.spawn_ctr_run(
        "vmmdies",
        &["sh", "-c", "echo ready; while :; do sleep 1; done"],
        false,
    );
    let _rest = c.read_until_line(&mut run, "ready");
    let vmm = jailed_vmm(c);
    // SAFETY: kill(2) on the VMM our test's shim started.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
    c.assert_sandbox_died(run.wait().unwrap());
    c.assert_clean(&["vmmdies"]);
    assert!(c.our_processes("veil").is_empty(), "no veil left");
}

#[test]
fn vm_sandbox_serves_a_two_container_cri_pod() {
    build_binaries();
    if !run_test_in_l1(
        "vm_sandbox_serves_a_two_container_cri_pod",
        Duration::from_secs(1800),
        &[],
    ) {
        return;
    }
    require_host!();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let c = containerd_with_vm_sandboxes();
            cri::two_containers_share_one_pod_sandbox(&c, 0).await;
            cri::an_oom_killed_container_is_reported_as_such(&c).await;
        });
}
