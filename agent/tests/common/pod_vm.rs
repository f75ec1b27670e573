//! The pod VM the nested (L1) agent tests boot: the project's kernel and initramfs with
//! `veil-agent` as PID 1, run by the VMM library on a thread, with placeholder drives the
//! tests swap layer images into.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use veil_agent::client::AgentClient;
use veil_agent::protocols::agent;
use veil_tests::netns::Netns;
use veil_tests::Capture;
use veil_vmm::{
    BlockConfig, Console, KernelSource, NetConfig, Vm, VmConfig, VmOutcome, VsockConfig,
};

use super::ctx;

/// A pod VM run by the library on its own thread.
pub struct PodVm {
    pub console: Capture,
    pub uds: PathBuf,
    pub disks: Vec<veil_vmm::DiskHandle>,
    pub stop: veil_vmm::StopHandle,
    run: Option<std::thread::JoinHandle<Result<VmOutcome, veil_vmm::VmError>>>,
    pub spawned: Instant,
}

impl PodVm {
    pub fn start(dir: &Path, host_data: &str) -> Self {
        Self::with_disks(dir, host_data, 1)
    }

    /// As [`PodVm::start`], with `disks` placeholder drives (`vda`, `vdb`, ...).
    pub fn with_disks(dir: &Path, host_data: &str, disks: usize) -> Self {
        Self::build(dir, host_data, disks, None)
    }

    /// As [`PodVm::start`], with a virtio-net device on the tap `net` names, which the VMM
    /// opens in the network namespace `netns` (as `veil run --net` does in its own).
    pub fn with_net(dir: &Path, host_data: &str, net: NetConfig, netns: &Netns) -> Self {
        Self::build(dir, host_data, 1, Some((net, netns)))
    }

    fn build(dir: &Path, host_data: &str, disks: usize, net: Option<(NetConfig, &Netns)>) -> Self {
        let kernel = veil_tests::guest_kernel("vmlinux");
        let initrd = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/guest-initramfs/initramfs.cpio.gz");
        assert!(
            initrd.is_file(),
            "{} is missing: run guest/build-initramfs.sh",
            initrd.display()
        );
        let console = Capture::default();
        let uds = dir.join("vsock.sock");
        let spawned = Instant::now();
        let mut config = VmConfig::new(KernelSource::Path(kernel));
        config.initrd = Some(initrd);
        config.cmdline = format!(
            "console=ttyS0 reboot=k,panic_warm panic=-1 VEIL_ATTESTATION=insecure \
             VEIL_INSECURE_HOST_DATA={host_data} RUST_LOG=info"
        );
        config.vcpus = 2;
        config.mem_mib = 512;
        config.console = Console::Writer(Box::new(console.clone()));
        // The placeholder the container layers are swapped into after boot.
        config.disks = (0..disks)
            .map(|n| BlockConfig {
                path: None,
                read_only: true,
                id: format!("layer{n}"),
            })
            .collect();
        config.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        });
        let vm = match net {
            None => Vm::new(config),
            Some((net, netns)) => {
                config.nets = vec![net];
                netns
                    .run(move || Vm::new(config))
                    .expect("enter the VM's network namespace")
            }
        }
        .expect("create the pod VM");
        let disks = vm.disks();
        let stop = vm.stop_handle();
        let run = std::thread::spawn(move || vm.run());
        Self {
            console,
            uds,
            disks,
            stop,
            run: Some(run),
            spawned,
        }
    }

    pub fn running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| !r.is_finished())
    }

    /// Connects once the agent answers (it refuses everything before a policy is set).
    pub async fn connect(&self, limit: Duration) -> AgentClient {
        while self.spawned.elapsed() < limit && self.running() {
            if let Ok(client) = AgentClient::connect_hybrid_vsock(&self.uds, 1024).await {
                let details = client
                    .agent
                    .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
                    .await;
                if details.is_err() {
                    return client;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "the agent never answered within {limit:?} (VM running: {}); console:\n{}",
            self.running(),
            self.console.text()
        );
    }

    /// Waits (bounded) for the VM to end and returns how.
    pub fn wait(&mut self, limit: Duration) -> VmOutcome {
        let started = Instant::now();
        while self.running() && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !self.running(),
            "the VM did not end within {limit:?}; console:\n{}",
            self.console.text()
        );
        self.run
            .take()
            .unwrap()
            .join()
            .expect("VM thread")
            .expect("VM run")
    }
}

impl Drop for PodVm {
    fn drop(&mut self) {
        // A test that failed on an agent call (a dropped connection, say) has not shown the
        // guest's side: show it here.
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "--- pod guest console (VM running: {})\n{}",
                self.running(),
                self.console.text()
            );
        }
        if let Some(run) = self.run.take() {
            // How a VM that ended by itself ended (a crash shows its registers).
            let ended = run.is_finished();
            self.stop.stop();
            let outcome = run.join();
            if panicking && ended {
                match outcome {
                    Ok(Ok(outcome)) => eprintln!("--- the pod VM ended: {}", outcome.exit),
                    Ok(Err(e)) => eprintln!("--- the pod VM failed: {e}"),
                    Err(_) => eprintln!("--- the pod VM's thread panicked"),
                }
            }
        }
    }
}
