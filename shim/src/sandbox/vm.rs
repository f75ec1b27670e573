//! The VM sandbox: one veil VM per pod, run as a jailed `veil run --jail` process (the
//! default, see `jailed`) or by the `veil_vmm` library on a thread of the shim
//! (`vm.jail = false`).
//!
//! Drives: `vda` carries the init data (the pod's policy, NUL-padded) and is followed by
//! `max_containers` empty placeholders; a container's root image is swapped into a free
//! placeholder (virtio-mmio has no hotplug): `DiskHandle::swap` on a thread, the image's file
//! descriptor over the control socket for a jailed VMM. The agent is reached through
//! the VMM's hybrid vsock socket. With `vm.snp` the guest is an IGVM file launched as an
//! SEV-SNP guest whose HOST_DATA is the policy's SHA-256; a host without SNP is an error,
//! never a silent non-confidential VM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use veil_agent::client::AgentClient;
use veil_agent::protocols::agent;
use veil_vmm::{
    BlockConfig, Console, CpuTemplate, DiskHandle, KernelSource, SnpConfig, SnpFirmware,
    StopHandle, Vm, VmConfig, VsockConfig,
};

use super::jailed::{self, JailedVmm};
use super::{connect_agent, ctx, Sandbox, SandboxError, SandboxSpec, AGENT_VSOCK_PORT};
use crate::config::SandboxKind;
use crate::network::PodNetwork;
use crate::rootfs::Image;

/// The guest's vsock context id (each VM has its own device, so one value serves all).
const GUEST_CID: u64 = 3;
/// How long the agent gets to end the VM itself before it is stopped.
const DESTROY_GRACE: Duration = Duration::from_secs(2);

/// Everything the VM needs, checked before anything starts (so a bad config fails fast and
/// leaves nothing).
#[derive(Debug)]
pub struct VmPlan {
    pub kernel: KernelSource,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub slots: u32,
    pub cpu_template: &'static CpuTemplate,
    pub snp: Option<SnpConfig>,
    pub init_data: Vec<u8>,
}

impl VmPlan {
    /// Checks the files and settings the config names, and the SNP host when asked for.
    pub fn new(spec: &SandboxSpec<'_>) -> Result<Self, SandboxError> {
        let vm = &spec.config.vm;
        let exists = |what: &str, p: &Path| {
            if p.is_file() {
                Ok(())
            } else {
                Err(SandboxError::Vm(format!(
                    "{what} {} does not exist (set it in the shim config)",
                    p.display()
                )))
            }
        };
        let cpu_template = CpuTemplate::by_name(&vm.cpu_template).ok_or_else(|| {
            SandboxError::Vm(format!("unknown vm.cpu_template {:?}", vm.cpu_template))
        })?;
        let mut cmdline = format!(
            "{} quiet VEIL_LISTEN=vsock:{AGENT_VSOCK_PORT}",
            veil_vmm::config::DEFAULT_CMDLINE
        );
        let (kernel, initrd, snp) = if vm.snp {
            let igvm = vm.igvm.as_deref().ok_or_else(|| {
                SandboxError::SnpUnavailable("vm.igvm (the IGVM guest image) is not set".into())
            })?;
            exists("vm.igvm", igvm)?;
            veil_vmm::snp_launch::check_kvm_host()
                .map_err(|e| SandboxError::SnpUnavailable(format!("this host cannot: {e}")))?;
            cmdline.push_str(" VEIL_ATTESTATION=auto VEIL_POLICY_DEVICE=/dev/vda");
            let snp = SnpConfig {
                firmware: SnpFirmware::Kvm,
                policy: vm.snp_policy,
                host_data: spec.init.host_data,
                model_report: None,
            };
            (KernelSource::Igvm(igvm.to_path_buf()), None, Some(snp))
        } else {
            exists("vm.kernel", &vm.kernel)?;
            exists("vm.initrd", &vm.initrd)?;
            // No SNP report in a plain VM: the agent's insecure backend reports the policy
            // digest as HOST_DATA so the same SetPolicy check runs.
            cmdline.push_str(&format!(
                " VEIL_ATTESTATION=insecure VEIL_INSECURE_HOST_DATA={}",
                spec.init.host_data_hex()
            ));
            (
                KernelSource::Path(vm.kernel.clone()),
                Some(vm.initrd.clone()),
                None,
            )
        };
        if !vm.kernel_params.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&vm.kernel_params);
        }
        Ok(Self {
            kernel,
            initrd,
            cmdline,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            slots: vm.max_containers,
            cpu_template,
            snp,
            init_data: spec.init.device_image(),
        })
    }

    /// The VMM's configuration, with the sandbox's files under `dir`.
    fn vm_config(self, dir: &Path) -> Result<VmConfig, SandboxError> {
        let init_path = dir.join("init-data.img");
        std::fs::write(&init_path, &self.init_data).map_err(|source| SandboxError::Io {
            what: "writing init data",
            path: init_path.clone(),
            source,
        })?;
        let mut config = VmConfig::new(self.kernel);
        config.initrd = self.initrd;
        config.cmdline = self.cmdline;
        config.vcpus = self.vcpus;
        config.mem_mib = self.memory_mib;
        config.cpu_template = self.cpu_template;
        config.console = Console::File(dir.join("console.log"));
        config.snp = self.snp;
        config.disks.push(BlockConfig {
            path: Some(init_path),
            read_only: true,
            id: "veil-init-data".into(),
        });
        for slot in 0..self.slots {
            config.disks.push(BlockConfig {
                path: None,
                read_only: true,
                id: format!("veil-rootfs-{slot}"),
            });
        }
        config.vsock = Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: dir.join("vsock.sock"),
        });
        Ok(config)
    }
}

/// The guest's name for drive `index` (0 = vda).
pub fn guest_disk(index: usize) -> String {
    let mut name = String::new();
    let mut n = index;
    loop {
        name.insert(0, (b'a' + (n % 26) as u8) as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("/dev/vd{name}")
}

/// Where the VM runs.
enum Vmm {
    /// On a thread of the shim (`vm.jail = false`).
    Thread {
        stop: StopHandle,
        disks: Vec<DiskHandle>,
    },
    /// A jailed `veil` process.
    Jailed(JailedVmm),
}

impl Vmm {
    /// Makes `image` the backing file of drive `index` (0 = vda).
    fn swap(&self, index: usize, image: &Path) -> Result<(), String> {
        match self {
            Self::Thread { disks, .. } => disks
                .get(index)
                .ok_or_else(|| format!("no drive {index}"))?
                .swap(image)
                .map_err(|e| e.to_string()),
            Self::Jailed(vmm) => vmm.swap(index, image),
        }
    }

    fn stop(&self) {
        match self {
            Self::Thread { stop, .. } => stop.stop(),
            Self::Jailed(vmm) => vmm.stop(),
        }
    }
}

pub struct VmSandbox {
    client: AgentClient,
    dir: PathBuf,
    vmm: Vmm,
    /// The container each placeholder drive (vdb onwards) holds.
    slots: Mutex<Vec<Option<String>>>,
    death: watch::Receiver<Option<String>>,
    destroyed: tokio::sync::Mutex<bool>,
    ending: std::sync::atomic::AtomicBool,
    network: Option<PodNetwork>,
}

impl VmSandbox {
    pub async fn start(spec: &SandboxSpec<'_>) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let plan = VmPlan::new(spec)?;
        let config = plan.vm_config(&spec.dir)?;
        let network = match &spec.netns {
            Some(netns) => PodNetwork::setup(netns)
                .await
                .map_err(|e| SandboxError::Vm(format!("pod network: {e}")))?,
            None => None,
        };
        let started = Self::start_with(spec, config, network.clone()).await;
        if let (Err(_), Some(network)) = (&started, &network) {
            network.teardown().await;
        }
        started
    }

    async fn start_with(
        spec: &SandboxSpec<'_>,
        mut config: VmConfig,
        network: Option<PodNetwork>,
    ) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let net_error =
            |e: crate::network::NetworkError| SandboxError::Vm(format!("pod network: {e}"));
        if let Some(network) = &network {
            config.nets.push(network.net_config().map_err(net_error)?);
        }
        let socket = spec.dir.join("vsock.sock");
        tracing::info!(
            sandbox = spec.id,
            vcpus = config.vcpus,
            mem_mib = config.mem_mib,
            snp = config.snp.is_some(),
            "VM sandbox starting"
        );
        let slots = config.disks.len().saturating_sub(1);
        let (tx, death) = watch::channel(None);
        let vmm = match spec.config.vm.jail {
            true => {
                let veil = jailed::veil_binary(spec.config.vm.veil.as_deref())?;
                let user = &spec.config.vm.jail_user;
                let netns = network.as_ref().map(PodNetwork::netns);
                Vmm::Jailed(JailedVmm::spawn(&veil, user, config, &spec.dir, netns, tx)?)
            }
            false => run_on_thread(spec, config, network.as_ref(), tx).await?,
        };
        let timeout = Duration::from_secs(spec.config.agent_start_timeout_secs);
        let connected = connect_agent(
            || {
                let socket = socket.clone();
                async move {
                    AgentClient::connect_hybrid_vsock(&socket, AGENT_VSOCK_PORT)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
            &death,
            timeout,
        )
        .await;
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                vmm.stop();
                let mut d = death.clone();
                let _ = d.wait_for(Option::is_some).await;
                return Err(e);
            }
        };
        Ok(Arc::new(VmSandbox {
            client,
            dir: spec.dir.clone(),
            vmm,
            slots: Mutex::new(vec![None; slots]),
            death,
            destroyed: tokio::sync::Mutex::new(false),
            ending: std::sync::atomic::AtomicBool::new(false),
            network,
        }))
    }
}

/// Builds the VM with the library and runs it on a thread of the shim. The VMM opens the tap
/// by name, so with a pod network the VM is built in the pod's namespace, where the tap is.
async fn run_on_thread(
    spec: &SandboxSpec<'_>,
    config: VmConfig,
    network: Option<&PodNetwork>,
    tx: watch::Sender<Option<String>>,
) -> Result<Vmm, SandboxError> {
    let vm = match network {
        Some(network) => {
            let network = network.clone();
            tokio::task::spawn_blocking(move || network.run_in_netns(move || Vm::new(config)))
                .await
                .expect("VM build task")
                .map_err(|e| SandboxError::Vm(format!("pod network: {e}")))?
        }
        None => tokio::task::spawn_blocking(move || Vm::new(config))
            .await
            .expect("VM build task"),
    }
    .map_err(|e| SandboxError::Vm(format!("cannot build the VM: {e}")))?;
    if let Some(launch) = vm.snp_launch() {
        tracing::info!(
            sandbox = spec.id,
            launch_digest = %launch.digest,
            host_data = %spec.init.host_data_hex(),
            "SEV-SNP launch: the guest's attestation report must carry this measurement"
        );
    }
    let stop = vm.stop_handle();
    let disks = vm.disks();
    let sandbox_id = spec.id.to_string();
    std::thread::Builder::new()
        .name(format!("vm-{}", &sandbox_id[..sandbox_id.len().min(8)]))
        .spawn(move || {
            let reason = match vm.run() {
                Ok(outcome) => format!("VM ended: {}", outcome.exit),
                Err(e) => format!("VM failed: {e}"),
            };
            tracing::warn!(sandbox = %sandbox_id, %reason, "VM sandbox ended");
            let _ = tx.send(Some(reason));
        })
        .map_err(|source| SandboxError::Io {
            what: "starting the VM thread for",
            path: spec.dir.clone(),
            source,
        })?;
    Ok(Vmm::Thread { stop, disks })
}

#[async_trait]
impl Sandbox for VmSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Vm
    }

    fn agent(&self) -> &AgentClient {
        &self.client
    }

    fn pid(&self) -> u32 {
        match &self.vmm {
            Vmm::Thread { .. } => std::process::id(),
            Vmm::Jailed(vmm) => vmm.pid(),
        }
    }

    async fn attach(&self, id: &str, image: &Image) -> Result<String, SandboxError> {
        let mut slots = self.slots.lock().expect("slots lock");
        let total = slots.len() as u32;
        let (index, slot) = slots
            .iter_mut()
            .enumerate()
            .find(|(_, owner)| owner.is_none())
            .ok_or(SandboxError::Full(total))?;
        // vda is the init data; slot i is drive i + 1.
        self.vmm
            .swap(index + 1, &image.path)
            .map_err(|why| SandboxError::Attach {
                image: image.path.clone(),
                why,
            })?;
        *slot = Some(id.to_string());
        // vda is the init data; slot i is drive i + 1.
        Ok(guest_disk(index + 1))
    }

    async fn detach(&self, id: &str) {
        let mut slots = self.slots.lock().expect("slots lock");
        if let Some(slot) = slots.iter_mut().find(|o| o.as_deref() == Some(id)) {
            *slot = None;
        }
    }

    fn death(&self) -> watch::Receiver<Option<String>> {
        self.death.clone()
    }

    fn ending(&self) -> bool {
        self.ending.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn network(&self) -> Option<&PodNetwork> {
        self.network.as_ref()
    }

    async fn destroy(&self) {
        let mut destroyed = self.destroyed.lock().await;
        if *destroyed {
            return;
        }
        *destroyed = true;
        self.ending.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut death = self.death.clone();
        if death.borrow().is_none() {
            // The agent ends the VM after DestroySandbox; stop it ourselves if it does not.
            let _ = tokio::time::timeout(
                DESTROY_GRACE,
                self.client
                    .agent
                    .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new()),
            )
            .await;
            if tokio::time::timeout(DESTROY_GRACE, death.wait_for(Option::is_some))
                .await
                .is_err()
            {
                self.vmm.stop();
            }
        }
        let _ = death.wait_for(Option::is_some).await;
        if let Some(network) = &self.network {
            network.teardown().await;
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || crate::cleanup::remove_tree(&dir))
            .await
            .expect("cleanup task");
        tracing::info!(dir = %self.dir.display(), "VM sandbox removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::InitData;

    fn spec<'a>(config: &'a Config, dir: &Path) -> SandboxSpec<'a> {
        SandboxSpec {
            id: "pod1",
            dir: dir.to_path_buf(),
            config,
            init: InitData::new(Some("package agent_policy".into())),
            vcpus: 2,
            memory_mib: 512,
            hostname: "pod1".into(),
            netns: None,
        }
    }

    #[test]
    fn guest_disk_names() {
        assert_eq!(guest_disk(0), "/dev/vda");
        assert_eq!(guest_disk(1), "/dev/vdb");
        assert_eq!(guest_disk(25), "/dev/vdz");
        assert_eq!(guest_disk(26), "/dev/vdaa");
    }

    #[test]
    fn a_missing_kernel_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.vm.kernel = "/nonexistent/vmlinux".into();
        let err = VmPlan::new(&spec(&config, dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vm.kernel /nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn plan_passes_policy_digest_and_builds_drives() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let initrd = dir.path().join("initrd");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&initrd, b"i").unwrap();
        let mut config = Config::default();
        config.vm.kernel = kernel;
        config.vm.initrd = initrd;
        config.vm.max_containers = 3;
        let s = spec(&config, dir.path());
        let digest = s.init.host_data_hex();
        let plan = VmPlan::new(&s).unwrap();
        assert!(plan
            .cmdline
            .contains(&format!("VEIL_INSECURE_HOST_DATA={digest}")));
        assert!(plan.cmdline.contains("VEIL_LISTEN=vsock:1024"));
        assert!(plan.snp.is_none());
        let vm = plan.vm_config(dir.path()).unwrap();
        assert_eq!((vm.vcpus, vm.mem_mib), (2, 512));
        assert_eq!(vm.disks.len(), 4);
        assert!(vm.disks[0].path.is_some() && vm.disks[1..].iter().all(|d| d.path.is_none()));
        let init = std::fs::read(dir.path().join("init-data.img")).unwrap();
        assert!(init.starts_with(b"package agent_policy\0"));
        assert_eq!(vm.vsock.unwrap().uds_path, dir.path().join("vsock.sock"));
    }

    /// This host has no SEV-SNP: an SNP sandbox must be refused, naming why, and never
    /// become a plain VM.
    #[test]
    fn snp_without_an_snp_host_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let igvm = dir.path().join("guest.igvm");
        std::fs::write(&igvm, b"x").unwrap();
        let mut config = Config::default();
        config.vm.snp = true;
        let err = VmPlan::new(&spec(&config, dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vm.igvm"), "{err}");
        config.vm.igvm = Some(igvm);
        match VmPlan::new(&spec(&config, dir.path())) {
            Err(e @ SandboxError::SnpUnavailable(_)) => {
                assert!(e.to_string().contains("refusing"), "{e}")
            }
            // Only an SNP host gets a plan, and then it is an SNP one.
            Ok(plan) => {
                assert!(plan.snp.is_some() && veil_vmm::snp_launch::check_kvm_host().is_ok())
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
}
