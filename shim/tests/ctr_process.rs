//! `ctr run` with the veil runtime and a process sandbox, driven through Debian's containerd:
//! the scenarios of `common/ctr.rs` (output, exit codes, stdin, exec, kill, nothing left).

mod common;

use common::*;

#[test]
fn echo_prints_hello() {
    require_host!();
    ctr::echo_prints_hello(&Containerd::start());
}

#[test]
fn exit_code_reaches_ctr() {
    require_host!();
    ctr::exit_code_reaches_ctr(&Containerd::start());
}

#[test]
fn cat_echoes_stdin() {
    require_host!();
    ctr::cat_echoes_stdin(&Containerd::start());
}

#[test]
fn terminal_has_ctr_size() {
    require_host!();
    ctr::terminal_has_ctr_size(&Containerd::start());
}

#[test]
fn exec_runs_a_second_process_and_kill_stops_the_first() {
    require_host!();
    ctr::exec_runs_a_second_process_and_kill_stops_the_first(&Containerd::start());
}
