//! Faults: an agent killed mid-run, and a sandbox that cannot start.

mod common;

use common::*;

#[test]
fn killing_the_agent_ends_the_task_with_an_error_status_and_cleans_up() {
    require_host!();
    let c = Containerd::start();
    let mut run = c.spawn_ctr_run(
        "agentdies",
        &["sh", "-c", "echo ready; while :; do sleep 1; done"],
        false,
    );
    let _rest = c.read_until_line(&mut run, "ready");
    let agents = c.our_processes("veil-agent");
    assert_eq!(agents.len(), 1, "one agent for the sandbox: {agents:?}");
    // SAFETY: kill(2) on the agent our test's shim started.
    assert_eq!(unsafe { libc::kill(agents[0], libc::SIGKILL) }, 0);
    c.assert_sandbox_died(run.wait().unwrap());
    c.assert_clean(&["agentdies"]);
}

#[test]
fn a_vm_sandbox_without_its_kernel_fails_create_naming_the_file() {
    require_host!();
    let c = Containerd::start_with_shim_config(
        "sandbox = \"vm\"",
        "[vm]\nkernel = \"/nonexistent/veil/vmlinux\"\n",
    );
    let out = c.ctr_run("nokernel", &["echo", "hello"], None);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vm.kernel /nonexistent/veil/vmlinux does not exist"),
        "{}",
        describe(&out)
    );
    assert_eq!(stdout_of(&out), "");
    c.assert_clean(&["nokernel"]);
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerds_delete_call() {
    require_host!();
    let c = Containerd::start();
    let mut run = c.spawn_ctr_run(
        "shimdies",
        &["sh", "-c", "echo ready; while :; do sleep 1; done"],
        false,
    );
    let _rest = c.read_until_line(&mut run, "ready");
    let shims = c.our_processes("containerd-shim-veil-v2");
    assert_eq!(shims.len(), 1, "one shim server: {shims:?}");
    // SAFETY: kill(2) on the shim server our test's containerd started.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);
    // ctr's wait fails with the connection; containerd sees the shim go and runs the shim
    // binary's `delete` action, which ends the agent and its containers from the records on
    // disk.
    let status = run.wait().unwrap();
    assert!(!status.success(), "{status}");
    c.assert_clean(&["shimdies"]);
}
