//! The `ctr` scenarios every sandbox kind must pass: output, exit codes, stdin, exec, kill,
//! and nothing left behind after each. `ctr_process.rs` runs them with a process sandbox on
//! the host, `nested_vm.rs` with VM sandboxes inside the nested kvm_amd harness.

use std::io::Read;

use veil_tests::nested::shell_quote;

use super::*;

/// A shell that prints `ready`, then runs until SIGTERM, which it answers with exit 143.
const LONG_RUNNING: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 143' TERM; echo ready; while :; do sleep 1; done",
];

pub fn echo_prints_hello(c: &Containerd) {
    let out = c.ctr_run("echo1", &["echo", "hello"], None);
    assert!(out.status.success(), "{}\n{}", describe(&out), c.log_text());
    assert_eq!(stdout_of(&out), "hello\n");
    c.assert_clean(&["echo1"]);
}

pub fn exit_code_reaches_ctr(c: &Containerd) {
    let out = c.ctr_run("exit7", &["sh", "-c", "exit 7"], None);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}\n{}",
        describe(&out),
        c.log_text()
    );
    c.assert_clean(&["exit7"]);
}

pub fn cat_echoes_stdin(c: &Containerd) {
    let out = c.ctr_run("cat1", &["cat"], Some(b"ping\npong\n"));
    assert!(out.status.success(), "{}\n{}", describe(&out), c.log_text());
    assert_eq!(
        stdout_of(&out),
        "ping\npong\n",
        "{}\n{}",
        describe(&out),
        c.log_text()
    );
    c.assert_clean(&["cat1"]);
}

/// `ctr run -t`: the container's stdio is a terminal whose size becomes ctr's own (ctr sends
/// resize-pty after start, so the container waits for it, up to 30 s). ctr needs a terminal
/// of its own for `-t`; util-linux's `script` gives it one, 33 rows by 101 columns, and copies
/// what ctr prints.
pub fn terminal_has_ctr_size(c: &Containerd) {
    let address = c.address.display().to_string();
    let shim_config = c.shim_config.display().to_string();
    let ctr_line = [
        "/usr/bin/ctr",
        "-a",
        &address,
        "-n",
        NAMESPACE,
        "run",
        "-t",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &shim_config,
        IMAGE,
        "tty1",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo on-a-tty; i=0; \
         while [ \"$(stty size)\" != '33 101' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
         stty size",
    ]
    .map(shell_quote)
    .join(" ");
    let out = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("stty rows 33 cols 101; {ctr_line}"))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    let text = stdout_of(&out);
    assert!(
        out.status.success(),
        "{}
{}",
        describe(&out),
        c.log_text()
    );
    assert!(text.contains("on-a-tty"), "{}", describe(&out));
    assert!(text.contains("33 101"), "{}", describe(&out));
    c.assert_clean(&["tty1"]);
}

pub fn exec_runs_a_second_process_and_kill_stops_the_first(c: &Containerd) {
    let mut run = c.spawn_ctr_run("long1", LONG_RUNNING, false);
    let mut rest = c.read_until_line(&mut run, "ready");

    let exec = c
        .ctr_cmd(NAMESPACE)
        .args(["task", "exec", "--exec-id", "e1", "long1"])
        .args(["sh", "-c", "echo from exec; exit 3"])
        .output()
        .unwrap();
    assert_eq!(exec.status.code(), Some(3), "{}", describe(&exec));
    assert_eq!(stdout_of(&exec), "from exec\n");

    // Stats (cgroup v2 metrics from the agent) and the process list reach ctr.
    let metrics = c
        .ctr_cmd(NAMESPACE)
        .args(["task", "metrics", "long1"])
        .output()
        .unwrap();
    assert!(
        metrics.status.success(),
        "{}\n{}",
        describe(&metrics),
        c.log_text()
    );
    assert!(
        stdout_of(&metrics).contains("pids.current"),
        "{}",
        describe(&metrics)
    );
    let ps = c
        .ctr_cmd(NAMESPACE)
        .args(["task", "ps", "long1"])
        .output()
        .unwrap();
    assert!(ps.status.success(), "{}", describe(&ps));
    let list = c.ctr_cmd(NAMESPACE).args(["task", "ls"]).output().unwrap();
    assert!(stdout_of(&list).contains("RUNNING"), "{}", describe(&list));

    let kill = c
        .ctr_cmd(NAMESPACE)
        .args(["task", "kill", "long1"])
        .output()
        .unwrap();
    assert!(kill.status.success(), "{}", describe(&kill));
    let status = run.wait().unwrap();
    let mut tail = String::new();
    rest.read_to_string(&mut tail).unwrap();
    assert_eq!(
        status.code(),
        Some(143),
        "ctr run: {status}\n{}",
        c.log_text()
    );
    c.assert_clean(&["long1"]);
}
