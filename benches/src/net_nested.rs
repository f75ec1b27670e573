//! Pod networking under a real (nested) KVM, Veil's virtio-net against QEMU's: the host side
//! boots one L1 and re-runs this binary inside it (`--net-inner PLAN`), which makes two network
//! namespaces joined by a veth with a tap tied to it (`veil_tests::netns::TapNetwork`, the
//! shim's tcfilter model), boots the pod guest on that tap under each VMM in turn (the VMM process joins the namespace before exec) (the pod VM
//! of `crate::nested`, plus a NIC), tells the agent the interface and route, starts a busybox
//! echo container, and from the peer namespace times 1-byte request/responses and a stream
//! echoed both ways. Results are written as JSON after every run.
//!
//! Everything in L1 is emulated: only the veil/QEMU ratios measured inside the same L1 mean
//! anything.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use veil_agent::testing::{interface_request, routes_request, sha256_hex, ALLOW_ALL};
use veil_tests::netns::{connect_retrying, measure_echo, TapNetwork};

use crate::nested::{
    bounded, cmdline, ctx, destroy_sandbox, finish, launch, start_container, wait_for_agent,
    with_console, InnerPlan, NestedError, NestedVmm, RunOrder, RunRecord,
};

/// The namespaces' name prefix and the tap in the VM's namespace.
const NAMESPACES: &str = "veil-bench-net";
const TAP: &str = "vtap0";
/// The guest NIC's MAC, the same under both VMMs (the agent finds the NIC by it).
pub const GUEST_MAC: &str = "02:00:c6:12:00:02";
/// The guest's interface name once the agent renamed it.
const GUEST_IF: &str = "eth0";
const ECHO_PORT: u16 = 7000;
/// How long the echo server may take to listen once the container started.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// The worst one run can take (boot, agent, container, measuring, power-off).
pub const RUN_LIMIT: Duration = Duration::from_secs(crate::nested::RUN_LIMIT.as_secs() + 180);

/// What the host hands the inner run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetPlan {
    /// The pod VM, VMMs, rounds, budget and result file (as the nested boot section's).
    pub vms: InnerPlan,
    /// 1-byte request/responses per run.
    pub round_trips: usize,
    /// MiB streamed through the echo (each way) per run.
    pub stream_mib: usize,
}

/// One VM's measurements.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetRun {
    pub vmm: Option<NestedVmm>,
    /// Median 1-byte request/response round trip, microseconds.
    pub rr_median_us: Option<f64>,
    /// Stream rate each way through the echo, MiB/s.
    pub stream_mib_per_s: Option<f64>,
    pub error: Option<String>,
}

/// What the inner run measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NetResult {
    pub runs: Vec<NetRun>,
    /// Rounds not run because the budget ran out.
    pub rounds_skipped: usize,
    pub elapsed_s: f64,
}

/// Errors of the inner run as a whole (one run's failure is recorded in its [`NetRun`]).
#[derive(Debug, thiserror::Error)]
pub enum NetBenchError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the plan {path} is not valid: {source}")]
    Plan {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the test network: {0}")]
    Network(#[from] veil_tests::netns::NetnsError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NetBenchError + 'a {
    move |source| NetBenchError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The VMM's arguments for a NIC on [`TAP`] with [`GUEST_MAC`].
pub fn nic_args(vmm: NestedVmm) -> Vec<String> {
    match vmm {
        NestedVmm::Veil => vec![
            "--net".into(),
            format!("tap={TAP},mac={GUEST_MAC},mtu={}", TapNetwork::MTU),
        ],
        // virtio-mmio as veil's; QEMU's own user-space virtio-net (no vhost-net).
        NestedVmm::Qemu => vec![
            "-netdev".into(),
            format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off"),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
        ],
    }
}

/// `command` with the NIC added, its process joining the network namespace `netns` between
/// fork and exec (the VMM opens the tap there; errors still name the VMM).
fn in_netns_with_nic(mut command: Command, vmm: NestedVmm, netns: File) -> Command {
    command.args(nic_args(vmm));
    let fd = netns.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and makes only the setns
    // system call (async-signal-safe) on `fd`, which is open: the File lives in the closure,
    // which the Command owns until it is dropped after spawning.
    unsafe {
        command.pre_exec(move || {
            let _open = &netns;
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command
}

/// The inner run: reads the plan, measures, writes the result. Runs inside L1.
pub fn inner_main(plan_path: &Path) -> Result<(), NetBenchError> {
    let text = std::fs::read_to_string(plan_path).map_err(io("cannot read", plan_path))?;
    let plan: NetPlan = serde_json::from_str(&text).map_err(|source| NetBenchError::Plan {
        path: plan_path.to_owned(),
        source,
    })?;
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(NetBenchError::Runtime)?;
    // Sockets cannot live on 9p; /run is a tmpfs in L1.
    let work = tempfile::Builder::new()
        .prefix("veil-net-")
        .tempdir_in("/run")
        .map_err(io("cannot create a directory in", Path::new("/run")))?;
    let disk = work.path().join("layer.ext4");
    std::fs::copy(&plan.vms.disk, &disk).map_err(io("cannot copy", &plan.vms.disk))?;
    let net = TapNetwork::create(NAMESPACES, TAP)?;
    let budget = Duration::from_secs(plan.vms.budget_secs);
    let mut result = NetResult::default();
    let mut order = RunOrder::new(plan.vms.rounds);
    while let Some((index, vmm)) = order.next(started.elapsed() > budget) {
        let dir = work.path().join(format!("run{index}"));
        std::fs::create_dir(&dir).map_err(io("cannot create", &dir))?;
        let mut record = NetRun {
            vmm: Some(vmm),
            ..NetRun::default()
        };
        if let Err(e) = one_run(&runtime, &plan, &net, vmm, &disk, &dir, &mut record) {
            record.error = Some(e.to_string());
            order.failed(vmm);
        }
        eprintln!("net: run {index} ({}): {record:?}", vmm.name());
        let _ = std::fs::remove_dir_all(&dir);
        result.runs.push(record);
        result.elapsed_s = started.elapsed().as_secs_f64();
        write_result(&plan.vms.out, &result)?;
    }
    result.rounds_skipped = order.rounds_skipped();
    result.elapsed_s = started.elapsed().as_secs_f64();
    write_result(&plan.vms.out, &result)
}

fn write_result(path: &Path, result: &NetResult) -> Result<(), NetBenchError> {
    let json = serde_json::to_string_pretty(result).expect("the result serialises");
    std::fs::write(path, json).map_err(io("cannot write", path))
}

/// Boots the pod VM on the tap under `vmm`, measures through an echo container, ends the VM.
fn one_run(
    runtime: &tokio::runtime::Runtime,
    plan: &NetPlan,
    net: &TapNetwork,
    vmm: NestedVmm,
    disk: &Path,
    dir: &Path,
    record: &mut NetRun,
) -> Result<(), NestedError> {
    let uds = dir.join("vsock.sock");
    let cmdline = cmdline(vmm, &sha256_hex(ALLOW_ALL));
    let ns_path = net.vm.path();
    let netns = File::open(&ns_path).map_err(|source| NestedError::Io {
        what: "cannot open the network namespace",
        path: ns_path,
        source,
    })?;
    let (mut process, _) = launch(&plan.vms, vmm, disk, dir, &cmdline, |c| {
        in_netns_with_nic(c, vmm, netns)
    })?;
    let vm = &mut process.vm;
    let measured = runtime.block_on(async {
        let (client, _) = wait_for_agent(vm, &uds).await?;
        start_container(
            &client,
            "echo",
            &["busybox", "nc", "-ll", "-p", "7000", "-e", "cat"],
        )
        .await?;
        let iface = interface_request(
            GUEST_IF,
            GUEST_MAC,
            TapNetwork::GUEST_IP,
            TapNetwork::PREFIX,
            TapNetwork::MTU,
        );
        bounded(
            "UpdateInterface",
            client.agent.update_interface(ctx(), &iface),
        )
        .await?;
        let route = routes_request(
            GUEST_IF,
            TapNetwork::GUEST_IP,
            TapNetwork::PREFIX,
            TapNetwork::PEER_IP,
        );
        bounded("UpdateRoutes", client.agent.update_routes(ctx(), &route)).await?;
        let (round_trips, stream_bytes) = (plan.round_trips, plan.stream_mib << 20);
        let figures = net
            .peer
            .run(move || {
                let stream = connect_retrying(TapNetwork::GUEST_IP, ECHO_PORT, CONNECT_LIMIT)?;
                measure_echo(stream, round_trips, stream_bytes)
            })
            .map_err(|e| NestedError::Call {
                call: "echo",
                detail: e.to_string(),
            })?
            .map_err(|e| NestedError::Call {
                call: "echo",
                detail: e.to_string(),
            })?;
        let mut rtts = figures.round_trip_us;
        rtts.sort_by(f64::total_cmp);
        record.rr_median_us = rtts.get(rtts.len() / 2).copied();
        record.stream_mib_per_s = Some(figures.stream_mib_per_s);
        destroy_sandbox(&client).await
    });
    if let Err(e) = measured {
        return Err(with_console(e, vm, dir));
    }
    finish(vm, &mut RunRecord::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_vmms_get_the_same_nic_on_the_same_tap() {
        let veil = nic_args(NestedVmm::Veil).join(" ");
        let qemu = nic_args(NestedVmm::Qemu).join(" ");
        assert_eq!(veil, format!("--net tap=vtap0,mac={GUEST_MAC},mtu=1500"));
        assert!(qemu.contains("ifname=vtap0,"), "{qemu}");
        assert!(qemu.contains(&format!("mac={GUEST_MAC}")), "{qemu}");
        assert!(qemu.contains("virtio-net-device"), "{qemu}");
    }

    #[test]
    fn the_vmm_keeps_its_name_and_arguments_and_gets_the_nic() {
        let mut c = Command::new("/v/veil");
        c.args(["run", "--vcpus", "2"]);
        let netns = File::open("/proc/self/ns/net").unwrap();
        let c = in_netns_with_nic(c, NestedVmm::Veil, netns);
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(c.get_program(), "/v/veil");
        assert_eq!(args[..3], ["run", "--vcpus", "2"]);
        assert_eq!(args[3..], nic_args(NestedVmm::Veil));
    }

    #[test]
    fn result_round_trips() {
        let r = NetResult {
            runs: vec![NetRun {
                vmm: Some(NestedVmm::Veil),
                rr_median_us: Some(120.0),
                stream_mib_per_s: Some(30.0),
                error: None,
            }],
            rounds_skipped: 0,
            elapsed_s: 9.0,
        };
        let back: NetResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.runs[0].rr_median_us, Some(120.0));
    }
}
