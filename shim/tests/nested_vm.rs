//! The shim with real VM sandboxes: inside the nested harness's L1 (a hardware-style KVM, see
//! `veil_tests::nested`), Debian's containerd and runc, the shim and `veil` VMs booting the
//! project's kernel and initramfs run the same `ctr` and CRI scenarios as the process
//! sandbox does on the host.

mod common;

use std::time::Duration;

use common::*;
use veil_tests::nested::run_test_in_l1;

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
    Containerd::start_with_shim_config(
        "sandbox = \"vm\"",
        &format!(
            "[vm]\nkernel = \"{}\"\ninitrd = \"{}\"\nvcpus = 2\nmemory_mib = 512\n",
            kernel.display(),
            initrd.display()
        ),
    )
}

#[test]
fn vm_sandboxes_run_ctr_echo_exit_code_stdin_exec_and_kill() {
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
    ctr::exec_runs_a_second_process_and_kill_stops_the_first(&c);
}

#[test]
fn vm_sandbox_serves_a_two_container_cri_pod() {
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
        .block_on(cri::two_containers_share_one_pod_sandbox(
            &containerd_with_vm_sandboxes(),
            0,
        ));
}
