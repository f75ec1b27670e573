//! The pod guest under a real (nested) KVM, Veil against QEMU microvm: the host side boots
//! one L1 (`veil_tests::nested`) and re-runs this binary inside it (`--nested-inner PLAN`),
//! which boots the project's kernel + initramfs with `veil-agent` as PID 1 under each VMM,
//! interleaved, and times spawn -> the kernel's first console line, spawn -> the agent's first
//! answer, and spawn -> a container's first output byte. The inner run writes its samples as
//! JSON into the scratch directory shared with the host, after every run, so a run cut short
//! still leaves what it measured.
//!
//! Everything in L1 is emulated: only ratios of times measured inside the same L1 mean
//! anything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use veil_agent::client::AgentClient;
use veil_agent::protocols::agent;
use veil_agent::testing::{create_request, read_req, sha256_hex, ALLOW_ALL};

use crate::launch::{ms_between, LaunchError, Launched};
use crate::sections::kernel::LINUX_VERSION;

/// The agent's vsock port (Kata's).
pub const AGENT_PORT: u32 = 1024;
/// The guest's vsock context id under both VMMs.
const GUEST_CID: u32 = 3;
/// The pod VM's shape, the same under both VMMs.
pub const VCPUS: u32 = 2;
pub const MEM_MIB: u32 = 512;

/// Bounds on each phase of one run (everything in L1 is emulated, and slow).
const FIRST_LINE_LIMIT: Duration = Duration::from_secs(90);
const AGENT_LIMIT: Duration = Duration::from_secs(240);
/// Spawn -> the kernel starting init: a few seconds in a quiet L1. A boot stuck on the way
/// (seen once under QEMU in CI) gives up early enough for the budget to hold another run.
const INIT_LIMIT: Duration = Duration::from_secs(60);
const CONTAINER_LIMIT: Duration = Duration::from_secs(120);
const EXIT_LIMIT: Duration = Duration::from_secs(60);
/// The kernel's line as it starts the initramfs's init (the agent).
const INIT_LINE: &str = "Run /init as init process";
/// Between attempts to reach the agent.
const POLL: Duration = Duration::from_millis(100);
/// Per connection attempt and per request.
const CALL_LIMIT: Duration = Duration::from_secs(10);
const VHOST_SOCKET_LIMIT: Duration = Duration::from_secs(30);
/// The worst one run can take.
pub const RUN_LIMIT: Duration = Duration::from_secs(90 + 240 + 120 + 60 + 30);

/// Errors of the nested measurements.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
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
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("vhost-device-vsock did not create {0} within {VHOST_SOCKET_LIMIT:?}")]
    VhostSocket(PathBuf),
    #[error("the agent did not answer within {limit:?} (VMM {state}; last attempt: {last}); console tail:\n{console}")]
    NoAgent {
        limit: Duration,
        state: String,
        last: String,
        console: String,
    },
    #[error("{call} failed: {detail}")]
    Call { call: &'static str, detail: String },
    #[error("{call} took longer than {CALL_LIMIT:?}")]
    CallTimeout { call: &'static str },
    #[error("no container output within {CONTAINER_LIMIT:?}")]
    NoOutput,
    #[error("the VMM exited with status {0} after DestroySandbox, expected 0")]
    ExitStatus(i32),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NestedError + 'a {
    move |source| NestedError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The VMMs compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NestedVmm {
    Veil,
    Qemu,
}

impl NestedVmm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Veil => "veil",
            Self::Qemu => "qemu microvm",
        }
    }

    /// Run `index` of the interleaved order veil, qemu, qemu, veil, veil, qemu, ...
    pub fn nth(index: usize) -> Self {
        if (index % 4 == 0) || (index % 4 == 3) {
            Self::Veil
        } else {
            Self::Qemu
        }
    }
}

/// The runs of one inner run: the planned rounds in the interleaved order, then one more run
/// of a VMM for each failed run, at most [`RunOrder::RETRIES`] in all; none once the time
/// budget is spent. Under emulation a boot sometimes stops where it never does on hardware
/// (QEMU's L2 was seen stuck bringing up its second CPU), and one such run should not leave a
/// VMM without a figure.
#[derive(Debug)]
pub struct RunOrder {
    planned: usize,
    started: usize,
    retries: std::collections::VecDeque<NestedVmm>,
    retries_left: usize,
    /// Planned runs not started because the budget ran out.
    skipped: usize,
}

impl RunOrder {
    pub const RETRIES: usize = 2;

    pub fn new(rounds: usize) -> Self {
        Self {
            planned: rounds * 2,
            started: 0,
            retries: Default::default(),
            retries_left: Self::RETRIES,
            skipped: 0,
        }
    }

    /// The next run's index and VMM, or `None` when all are done or `over_budget`.
    pub fn next(&mut self, over_budget: bool) -> Option<(usize, NestedVmm)> {
        let index = self.started;
        if over_budget {
            self.skipped = self.planned.saturating_sub(index);
            return None;
        }
        let vmm = if index < self.planned {
            NestedVmm::nth(index)
        } else {
            self.retries.pop_front()?
        };
        self.started += 1;
        Some((index, vmm))
    }

    /// Records that the run of `vmm` failed: it gets another run if retries are left.
    pub fn failed(&mut self, vmm: NestedVmm) {
        if self.retries_left > 0 {
            self.retries_left -= 1;
            self.retries.push_back(vmm);
        }
    }

    /// Rounds not run because the budget ran out.
    pub fn rounds_skipped(&self) -> usize {
        self.skipped.div_ceil(2)
    }
}

/// What the host hands the inner run (as JSON in the scratch directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InnerPlan {
    pub veil: PathBuf,
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// The busybox ext4 image attached as the container's layer.
    pub disk: PathBuf,
    /// Rounds; each boots each VMM once.
    pub rounds: usize,
    /// No run starts after this many seconds since the inner run began (one run takes at
    /// most [`RUN_LIMIT`]).
    pub budget_secs: u64,
    /// Where the inner run writes its [`InnerResult`].
    pub out: PathBuf,
}

/// One boot's measurements, in milliseconds since the VMM was spawned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub vmm: Option<NestedVmm>,
    pub first_line_ms: Option<f64>,
    pub agent_ms: Option<f64>,
    pub output_ms: Option<f64>,
    /// The VMM's exit status after DestroySandbox.
    pub exit_status: Option<i32>,
    pub error: Option<String>,
}

/// What the inner run measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InnerResult {
    pub runs: Vec<RunRecord>,
    /// Rounds not run because the budget ran out.
    pub rounds_skipped: usize,
    /// Seconds the inner run took.
    pub elapsed_s: f64,
}

/// The kernel command line, the same under both VMMs but for how the guest restarts (the
/// agent ends the VM with a restart): veil stops on the i8042 reset (`reboot=k`), QEMU microvm
/// has no i8042 and stops on a triple fault under `-no-reboot` (`reboot=t`).
pub fn cmdline(vmm: NestedVmm, host_data: &str) -> String {
    let reboot = match vmm {
        NestedVmm::Veil => "reboot=k,panic_warm",
        NestedVmm::Qemu => "reboot=t",
    };
    format!(
        "console=ttyS0 earlyprintk=serial,ttyS0 {reboot} panic=-1 \
         VEIL_ATTESTATION=insecure VEIL_INSECURE_HOST_DATA={host_data} RUST_LOG=warn"
    )
}

/// `veil run` for the pod VM.
pub fn veil_command(plan: &InnerPlan, disk: &Path, uds: &Path, cmdline: &str) -> Command {
    let mut c = Command::new(&plan.veil);
    c.arg("run")
        .arg("--kernel")
        .arg(&plan.vmlinux)
        .arg("--initrd")
        .arg(&plan.initramfs)
        .arg("--cmdline")
        .arg(cmdline)
        .args(["--console", "stdout"])
        .arg("--mem-mib")
        .arg(MEM_MIB.to_string())
        .arg("--vcpus")
        .arg(VCPUS.to_string())
        .arg("--disk")
        .arg(format!("{},ro", disk.display()))
        .arg("--vsock-cid")
        .arg(GUEST_CID.to_string())
        .arg("--vsock-uds")
        .arg(uds);
    c
}

/// QEMU microvm for the pod VM: the same kernel, initramfs and command line, the vsock device
/// through vhost-device-vsock (its socket `vhost`), guest memory a shared memfd as vhost-user
/// needs.
pub fn qemu_command(plan: &InnerPlan, disk: &Path, vhost: &Path, cmdline: &str) -> Command {
    let mut c = Command::new(&plan.qemu);
    c.args([
        "-M",
        "microvm,acpi=off,memory-backend=mem",
        "-accel",
        "kvm",
        "-cpu",
        "host",
    ])
    .arg("-smp")
    .arg(VCPUS.to_string())
    .arg("-m")
    .arg(format!("{MEM_MIB}M"))
    .arg("-object")
    .arg(format!(
        "memory-backend-memfd,id=mem,size={MEM_MIB}M,share=on"
    ))
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&plan.vmlinux)
    .arg("-initrd")
    .arg(&plan.initramfs)
    .arg("-append")
    .arg(cmdline)
    .arg("-chardev")
    .arg(format!("socket,id=c0,path={}", vhost.display()))
    .args(["-device", "vhost-user-vsock-device,chardev=c0"])
    .arg("-drive")
    .arg(format!(
        "file={},if=none,id=d0,format=raw,readonly=on",
        disk.display()
    ))
    .args(["-device", "virtio-blk-device,drive=d0"]);
    c
}

/// Kills and reaps a helper process on drop.
pub struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The inner run: reads the plan, measures, writes the result. Runs inside L1.
pub fn inner_main(plan_path: &Path) -> Result<(), NestedError> {
    let text = std::fs::read_to_string(plan_path).map_err(io("cannot read", plan_path))?;
    let plan: InnerPlan = serde_json::from_str(&text).map_err(|source| NestedError::Plan {
        path: plan_path.to_owned(),
        source,
    })?;
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NestedError::Runtime)?;
    // Sockets cannot live on 9p; /run is a tmpfs in L1. The layer is copied there too, so both
    // VMMs read it from memory rather than through 9p.
    let work = tempfile::Builder::new()
        .prefix("veil-nested-")
        .tempdir_in("/run")
        .map_err(io("cannot create a directory in", Path::new("/run")))?;
    let disk = work.path().join("layer.ext4");
    std::fs::copy(&plan.disk, &disk).map_err(io("cannot copy", &plan.disk))?;
    let host_data = sha256_hex(ALLOW_ALL);
    let budget = Duration::from_secs(plan.budget_secs);
    let mut result = InnerResult::default();
    let mut order = RunOrder::new(plan.rounds);
    while let Some((index, vmm)) = order.next(started.elapsed() > budget) {
        let dir = work.path().join(format!("run{index}"));
        std::fs::create_dir(&dir).map_err(io("cannot create", &dir))?;
        let mut record = RunRecord {
            vmm: Some(vmm),
            ..RunRecord::default()
        };
        let cmdline = cmdline(vmm, &host_data);
        if let Err(e) = one_run(&runtime, &plan, vmm, &disk, &dir, &cmdline, &mut record) {
            record.error = Some(e.to_string());
            order.failed(vmm);
        }
        eprintln!("nested: run {index} ({}): {record:?}", vmm.name());
        let _ = std::fs::remove_dir_all(&dir);
        result.runs.push(record);
        result.elapsed_s = started.elapsed().as_secs_f64();
        write_result(&plan.out, &result)?;
    }
    result.rounds_skipped = order.rounds_skipped();
    result.elapsed_s = started.elapsed().as_secs_f64();
    write_result(&plan.out, &result)
}

fn write_result(path: &Path, result: &InnerResult) -> Result<(), NestedError> {
    let json = serde_json::to_string_pretty(result).expect("the result serialises");
    std::fs::write(path, json).map_err(io("cannot write", path))
}

/// A pod VM's VMM process, with vhost-device-vsock beside it under QEMU.
pub struct PodVmProcess {
    pub vm: Launched,
    _vhost: Option<Helper>,
}

/// Spawns the pod VM under `vmm` (its sockets in `dir`), passing the VMM's command through
/// `adjust` first (extra devices, a network namespace), and waits until the kernel starts
/// init; returns the process and when the kernel printed its first line.
pub fn launch(
    plan: &InnerPlan,
    vmm: NestedVmm,
    disk: &Path,
    dir: &Path,
    cmdline: &str,
    adjust: impl FnOnce(Command) -> Command,
) -> Result<(PodVmProcess, Instant), NestedError> {
    let uds = dir.join("vsock.sock");
    let (command, vhost) = match vmm {
        NestedVmm::Veil => (veil_command(plan, disk, &uds, cmdline), None),
        NestedVmm::Qemu => {
            // vhost-device-vsock serves the hybrid socket for QEMU's vsock device; it must be
            // up before QEMU starts, and is not part of QEMU's time.
            let vhost = dir.join("vhost.sock");
            let log_path = dir.join("vhost.log");
            let log = std::fs::File::create(&log_path).map_err(io("cannot create", &log_path))?;
            let child = Command::new(&plan.vhost_vsock)
                .arg("--guest-cid")
                .arg(GUEST_CID.to_string())
                .arg("--socket")
                .arg(&vhost)
                .arg("--uds-path")
                .arg(&uds)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(io("cannot start", &plan.vhost_vsock))?;
            let helper = Helper(child);
            let waited = Instant::now();
            while !vhost.exists() {
                if waited.elapsed() > VHOST_SOCKET_LIMIT {
                    return Err(NestedError::VhostSocket(vhost));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (qemu_command(plan, disk, &vhost, cmdline), Some(helper))
        }
    };
    let mut vm = Launched::spawn(adjust(command))?;
    let line = vm.wait_for_line(LINUX_VERSION, FIRST_LINE_LIMIT)?;
    // The agent is not tried before the kernel starts init, under either VMM:
    // vhost-device-vsock can stop answering connections made before the guest's vsock driver
    // is up.
    vm.wait_for_line(INIT_LINE, INIT_LIMIT)?;
    Ok((PodVmProcess { vm, _vhost: vhost }, line))
}

/// Boots the pod VM once under `vmm` and fills `record` as far as it gets.
fn one_run(
    runtime: &tokio::runtime::Runtime,
    plan: &InnerPlan,
    vmm: NestedVmm,
    disk: &Path,
    dir: &Path,
    cmdline: &str,
    record: &mut RunRecord,
) -> Result<(), NestedError> {
    let uds = dir.join("vsock.sock");
    let (mut process, line) = launch(plan, vmm, disk, dir, cmdline, |c| c)?;
    let vm = &mut process.vm;
    record.first_line_ms = Some(ms_between(vm.spawned_at, line));
    let pod = runtime.block_on(pod(vm, &uds, record));
    if let Err(e) = pod {
        return Err(with_console(e, vm, dir));
    }
    finish(vm, record)
}

/// Adds the console's and vhost-device-vsock's last lines to an agent that never answered.
pub fn with_console(e: NestedError, vm: &mut Launched, dir: &Path) -> NestedError {
    match e {
        NestedError::NoAgent {
            limit, state, last, ..
        } => {
            let console = vm.remaining_lines(Duration::from_millis(200));
            NestedError::NoAgent {
                limit,
                state,
                last,
                console: tail(&console, 12) + &vhost_log(dir),
            }
        }
        e => e,
    }
}

/// Waits for the VMM to exit after DestroySandbox and checks it exited 0.
pub fn finish(vm: &mut Launched, record: &mut RunRecord) -> Result<(), NestedError> {
    let ended = vm.wait(EXIT_LIMIT)?;
    record.exit_status = Some(ended.status);
    if ended.status != 0 {
        return Err(NestedError::ExitStatus(ended.status));
    }
    Ok(())
}

/// The end of vhost-device-vsock's log, if it wrote one.
fn vhost_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("vhost.log")).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(|l| format!("{l}\n")).collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("vhost-device-vsock's log ends:\n{}", tail(&lines, 8))
    }
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].concat()
}

/// Bounds one agent call.
pub async fn bounded<T>(
    call: &'static str,
    f: impl std::future::Future<Output = ttrpc::Result<T>>,
) -> Result<T, NestedError> {
    match tokio::time::timeout(CALL_LIMIT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(NestedError::Call {
            call,
            detail: format!("{e:?}"),
        }),
        Err(_) => Err(NestedError::CallTimeout { call }),
    }
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// Waits for the agent's first answer (a refusal: no policy is set yet) and returns the
/// client and when it answered.
pub async fn wait_for_agent(
    vm: &mut Launched,
    uds: &Path,
) -> Result<(AgentClient, Instant), NestedError> {
    let mut last = String::from("none");
    loop {
        if vm.spawned_at.elapsed() > AGENT_LIMIT {
            return Err(NestedError::NoAgent {
                limit: AGENT_LIMIT,
                state: "running".into(),
                last,
                console: String::new(),
            });
        }
        if let Some(ended) = vm.try_wait()? {
            return Err(NestedError::NoAgent {
                limit: AGENT_LIMIT,
                state: format!("exited with status {}", ended.status),
                last,
                console: String::new(),
            });
        }
        let connect = AgentClient::connect_hybrid_vsock(uds, AGENT_PORT);
        match tokio::time::timeout(CALL_LIMIT, connect).await {
            Ok(Ok(client)) => {
                let request = agent::GuestDetailsRequest::new();
                let details = client.agent.get_guest_details(ctx(), &request);
                match tokio::time::timeout(CALL_LIMIT, details).await {
                    Ok(Ok(_)) | Ok(Err(ttrpc::Error::RpcStatus(_))) => {
                        return Ok((client, Instant::now()))
                    }
                    Ok(Err(e)) => last = format!("GetGuestDetails: {e:?}"),
                    Err(_) => last = format!("GetGuestDetails: no answer in {CALL_LIMIT:?}"),
                }
            }
            Ok(Err(e)) => last = format!("connect: {e}"),
            Err(_) => last = format!("connect: no answer in {CALL_LIMIT:?}"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sets the allow-all policy and starts container `id` running `args` from `/dev/vda`.
pub async fn start_container(
    client: &AgentClient,
    id: &str,
    args: &[&str],
) -> Result<(), NestedError> {
    let mut set = agent::SetPolicyRequest::new();
    set.policy = ALLOW_ALL.into();
    bounded("SetPolicy", client.agent.set_policy(ctx(), &set)).await?;
    let create = create_request(id, "/dev/vda", args);
    bounded(
        "CreateContainer",
        client.agent.create_container(ctx(), &create),
    )
    .await?;
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    bounded(
        "StartContainer",
        client.agent.start_container(ctx(), &start),
    )
    .await?;
    Ok(())
}

/// Ends the sandbox: the agent powers the guest off.
pub async fn destroy_sandbox(client: &AgentClient) -> Result<(), NestedError> {
    bounded(
        "DestroySandbox",
        client
            .agent
            .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new()),
    )
    .await?;
    Ok(())
}

/// Waits for the agent's first answer, runs `echo hello` in a container, reads its first
/// output byte, and destroys the sandbox.
async fn pod(vm: &mut Launched, uds: &Path, record: &mut RunRecord) -> Result<(), NestedError> {
    let (client, answered) = wait_for_agent(vm, uds).await?;
    record.agent_ms = Some(ms_between(vm.spawned_at, answered));
    start_container(&client, "hello", &["echo", "hello"]).await?;
    let read = async {
        loop {
            let data = bounded(
                "ReadStdout",
                client.agent.read_stdout(ctx(), &read_req("hello", "hello")),
            )
            .await?
            .data;
            if !data.is_empty() {
                return Ok::<_, NestedError>(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let at = tokio::time::timeout(CONTAINER_LIMIT, read)
        .await
        .map_err(|_| NestedError::NoOutput)??;
    record.output_ms = Some(ms_between(vm.spawned_at, at));
    destroy_sandbox(&client).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> InnerPlan {
        InnerPlan {
            veil: "/v/veil".into(),
            qemu: "/q/qemu".into(),
            vhost_vsock: "/h/vhost".into(),
            vmlinux: "/k/vmlinux".into(),
            initramfs: "/k/initrd".into(),
            disk: "/d/layer".into(),
            rounds: 2,
            budget_secs: 100,
            out: "/o/result.json".into(),
        }
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn interleaved_order() {
        let order: Vec<_> = (0..6).map(NestedVmm::nth).collect();
        use NestedVmm::*;
        assert_eq!(order, [Veil, Qemu, Qemu, Veil, Veil, Qemu]);
    }

    #[test]
    fn failed_runs_are_run_again_within_the_retries_and_the_budget() {
        use NestedVmm::*;
        let mut order = RunOrder::new(2);
        let mut seen = Vec::new();
        while let Some((index, vmm)) = order.next(false) {
            seen.push((index, vmm));
            // Every QEMU run fails: only two get another run.
            if vmm == Qemu {
                order.failed(vmm);
            }
        }
        assert_eq!(
            seen,
            [
                (0, Veil),
                (1, Qemu),
                (2, Qemu),
                (3, Veil),
                (4, Qemu),
                (5, Qemu)
            ]
        );
        assert_eq!(order.rounds_skipped(), 0);

        let mut order = RunOrder::new(3);
        assert_eq!(order.next(false), Some((0, Veil)));
        order.failed(Veil);
        assert_eq!(order.next(true), None);
        // Five planned runs not started: three rounds' worth, rounded up.
        assert_eq!(order.rounds_skipped(), 3);
    }

    #[test]
    fn both_vmms_boot_the_same_guest_and_shape() {
        let p = plan();
        let line = cmdline(NestedVmm::Veil, "ab");
        let qline = cmdline(NestedVmm::Qemu, "ab");
        let veil = args(&veil_command(
            &p,
            Path::new("/r/l"),
            Path::new("/r/u"),
            &line,
        ));
        let qemu = args(&qemu_command(
            &p,
            Path::new("/r/l"),
            Path::new("/r/h"),
            &qline,
        ));
        assert!(veil.windows(2).any(|w| w == ["--kernel", "/k/vmlinux"]));
        assert!(veil.windows(2).any(|w| w == ["--initrd", "/k/initrd"]));
        assert!(veil.windows(2).any(|w| w == ["--cmdline", line.as_str()]));
        assert!(veil.windows(2).any(|w| w == ["--disk", "/r/l,ro"]));
        assert!(veil.windows(2).any(|w| w == ["--vcpus", "2"]));
        assert!(veil.windows(2).any(|w| w == ["--mem-mib", "512"]));
        assert!(qemu.windows(2).any(|w| w == ["-kernel", "/k/vmlinux"]));
        assert!(qemu.windows(2).any(|w| w == ["-initrd", "/k/initrd"]));
        assert!(qemu.windows(2).any(|w| w == ["-append", qline.as_str()]));
        assert_eq!(line.replace("reboot=k,panic_warm", "reboot=t"), qline);
        assert!(qemu.windows(2).any(|w| w == ["-smp", "2"]));
        assert!(qemu.windows(2).any(|w| w == ["-m", "512M"]));
        assert!(qemu.windows(2).any(|w| w == ["-accel", "kvm"]));
        assert!(qemu
            .iter()
            .any(|a| a == "file=/r/l,if=none,id=d0,format=raw,readonly=on"));
        assert!(line.contains("VEIL_INSECURE_HOST_DATA=ab "), "{line}");
    }

    #[test]
    fn plan_and_result_round_trip() {
        let json = serde_json::to_string(&plan()).unwrap();
        let back: InnerPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back.rounds, 2);
        let r = InnerResult {
            runs: vec![RunRecord {
                vmm: Some(NestedVmm::Qemu),
                agent_ms: Some(1.5),
                ..RunRecord::default()
            }],
            rounds_skipped: 1,
            elapsed_s: 3.0,
        };
        let back: InnerResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.runs[0].vmm, Some(NestedVmm::Qemu));
        assert_eq!(back.runs[0].agent_ms, Some(1.5));
    }
}
