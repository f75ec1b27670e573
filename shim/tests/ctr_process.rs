//! `ctr run` with the veil runtime and a process sandbox, driven through Debian's containerd:
//! output, exit codes, stdin, exec, kill, and nothing left behind after each.

mod common;

use std::io::Read;

use common::*;

/// A shell that prints `ready`, then runs until SIGTERM, which it answers with exit 143.
const LONG_RUNNING: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 143' TERM; echo ready; while :; do sleep 1; done",
];

#[test]
fn echo_prints_hello() {
    require_host!();
    let c = Containerd::start();
    let out = c.ctr_run("echo1", &["echo", "hello"], None);
    assert!(out.status.success(), "{}\n{}", describe(&out), c.log_text());
    assert_eq!(stdout_of(&out), "hello\n");
    c.assert_clean(&["echo1"]);
}

#[test]
fn exit_code_reaches_ctr() {
    require_host!();
    let c = Containerd::start();
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

#[test]
fn cat_echoes_stdin() {
    require_host!();
    let c = Containerd::start();
    let out = c.ctr_run("cat1", &["cat"], Some(b"ping\npong\n"));
    assert!(out.status.success(), "{}\n{}", describe(&out), c.log_text());
    assert_eq!(stdout_of(&out), "ping\npong\n");
    c.assert_clean(&["cat1"]);
}

#[test]
fn exec_runs_a_second_process_and_kill_stops_the_first() {
    require_host!();
    let c = Containerd::start();
    let mut run = c.spawn_ctr_run("long1", LONG_RUNNING, false);
    let mut rest = read_until_line(&mut run, "ready");

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
    assert!(metrics.status.success(), "{}", describe(&metrics));
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
