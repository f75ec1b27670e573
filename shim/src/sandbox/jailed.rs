//! The VM of a sandbox as a jailed `veil run --jail` process (the default; `vm.jail = false`
//! runs it on a thread of the shim instead). The shim keeps one end of a control socket
//! (`veil run --control-fd`): container images are opened here and passed to the VMM as file
//! descriptors, since the jailed VMM can open nothing. The VMM's stderr goes to `vmm.log` in
//! the sandbox directory; its exit status says how the VM ended.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tokio::sync::watch;
use veil_vmm::control::ControlClient;
use veil_vmm::{Console, KernelSource, SnpFirmware, VmConfig};

use super::SandboxError;

/// The VMM's stderr, in the sandbox directory.
const LOG_FILE: &str = "vmm.log";
/// The control socket's number in the VMM process.
const CONTROL_FD: i32 = 3;
/// Address space the jailed VMM may use beyond guest memory: code, thread stacks, allocator
/// arenas (per thread), device buffers.
const ADDRESS_SPACE_MARGIN_MIB: u64 = 1024;
const ADDRESS_SPACE_PER_VCPU_MIB: u64 = 128;
/// How much of the end of `vmm.log` a death reason quotes.
const LOG_TAIL: usize = 512;

/// A running jailed VMM.
pub struct JailedVmm {
    pid: u32,
    control: Mutex<ControlClient>,
}

impl JailedVmm {
    /// Starts `veil` on `config`; `death` gets the reason once the process ended.
    pub fn spawn(
        veil: &Path,
        jail_user: &str,
        config: VmConfig,
        dir: &Path,
        netns: Option<&Path>,
        death: watch::Sender<Option<String>>,
    ) -> Result<Self, SandboxError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::Io { what, path, source }
        };
        let args = veil_args(&config, jail_user)?;
        let log_path = dir.join(LOG_FILE);
        let log = File::create(&log_path).map_err(io("creating", &log_path))?;
        let (ours, theirs) =
            UnixStream::pair().map_err(io("creating the control socket in", dir))?;
        let theirs_fd = theirs.as_raw_fd();
        // The VMM opens its taps (by name) before it enters the jail's own network namespace,
        // so it starts in the pod's, where the shim made the tap.
        let netns = netns
            .map(|path| File::open(path).map_err(io("opening the pod network namespace", path)))
            .transpose()?;
        let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        let mut command = tokio::process::Command::new(veil);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: between fork and exec only setns and dup2, which are async-signal-safe
        // system calls on descriptors that stay open until the spawn returns; the duplicate
        // has no CLOEXEC, so the VMM inherits its end as fd 3.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::dup2(theirs_fd, CONTROL_FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(io("starting the VMM", veil))?;
        drop(theirs);
        drop(netns);
        let pid = child.id().unwrap_or_default();
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => format!("VM ended ({status}){}", log_tail(&log_path)),
                Err(e) => format!("cannot wait for the VMM: {e}"),
            };
            tracing::warn!(%reason, "VM sandbox ended");
            let _ = death.send(Some(reason));
        });
        Ok(Self {
            pid,
            control: Mutex::new(ControlClient::new(ours)),
        })
    }

    /// Makes `image` (opened here, read-only) the backing file of drive `index` (0 = vda).
    pub fn swap(&self, index: usize, image: &Path) -> Result<(), String> {
        let file = File::open(image).map_err(|e| format!("cannot open it: {e}"))?;
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        control.swap(index, &file).map_err(|e| e.to_string())
    }

    /// The `veil` process (the jail's relay; the VMM is its only child).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops the VM (`stop` over the control socket: what SIGTERM to `veil` does).
    pub fn stop(&self) {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = control.stop() {
            tracing::debug!(pid = self.pid, "stopping the VMM: {e}");
        }
    }
}

/// The last lines of the VMM's log, for a death reason.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(LOG_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    match &text[start..] {
        "" => String::new(),
        tail => format!(": {tail}"),
    }
}

/// `veil run --jail` arguments for `config`.
fn veil_args(config: &VmConfig, jail_user: &str) -> Result<Vec<OsString>, SandboxError> {
    let mut args: Vec<OsString> = vec!["run".into(), "--jail".into()];
    let mut arg = |name: &str, value: OsString| {
        args.push(name.into());
        args.push(value);
    };
    match &config.kernel {
        KernelSource::Path(path) => arg("--kernel", path.into()),
        KernelSource::Igvm(path) => arg("--igvm", path.into()),
        KernelSource::Flat64(_) => {
            return Err(SandboxError::Vm(
                "a built-in guest cannot run in a jailed VMM".into(),
            ))
        }
    }
    if let Some(snp) = &config.snp {
        if snp.firmware == SnpFirmware::Model {
            arg("--snp-firmware", "model".into());
        }
        if let Some(policy) = snp.policy {
            arg("--policy", format!("{policy:#x}").into());
        }
        arg("--host-data", hex::encode(snp.host_data).into());
    }
    if let Some(initrd) = &config.initrd {
        arg("--initrd", initrd.into());
    }
    arg("--cmdline", config.cmdline.clone().into());
    arg("--vcpus", config.vcpus.to_string().into());
    arg("--mem-mib", config.mem_mib.to_string().into());
    arg("--cpu-template", config.cpu_template.name.into());
    match &config.console {
        Console::File(path) => arg("--console", path.into()),
        _ => arg("--console", "off".into()),
    }
    for disk in &config.disks {
        let mut spec = OsString::new();
        if let Some(path) = &disk.path {
            if path.as_os_str().as_encoded_bytes().contains(&b',') {
                return Err(SandboxError::Vm(format!(
                    "disk path {} has a comma, which `veil --disk` cannot take",
                    path.display()
                )));
            }
            spec.push(path);
        }
        if disk.read_only {
            spec.push(",ro");
        }
        if !disk.id.is_empty() {
            spec.push(format!(",id={}", disk.id));
        }
        arg("--disk", spec);
    }
    for net in &config.nets {
        let mut spec = format!("tap={},mtu={}", net.tap, net.mtu);
        if let Some(mac) = net.mac {
            spec.push_str(&format!(",mac={mac}"));
        }
        arg("--net", spec.into());
    }
    if let Some(vsock) = &config.vsock {
        arg("--vsock-cid", vsock.guest_cid.to_string().into());
        arg("--vsock-uds", vsock.uds_path.clone().into());
    }
    arg("--jail-user", jail_user.into());
    let address_space = config.mem_mib
        + ADDRESS_SPACE_MARGIN_MIB
        + ADDRESS_SPACE_PER_VCPU_MIB * u64::from(config.vcpus);
    arg("--jail-max-memory-mib", address_space.to_string().into());
    arg("--control-fd", CONTROL_FD.to_string().into());
    Ok(args)
}

/// The `veil` binary: the configured path, else next to the shim, else on PATH.
pub fn veil_binary(configured: Option<&Path>) -> Result<PathBuf, SandboxError> {
    super::process::find_binary("veil", configured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_vmm::{BlockConfig, VsockConfig};

    #[test]
    fn args_carry_every_setting() {
        let mut config = VmConfig::new(KernelSource::Path("/k".into()));
        config.initrd = Some("/i".into());
        config.vcpus = 2;
        config.mem_mib = 512;
        config.console = Console::File("/d/console.log".into());
        config.disks = vec![
            BlockConfig {
                path: Some("/d/init.img".into()),
                read_only: true,
                id: "veil-init-data".into(),
            },
            BlockConfig {
                path: None,
                read_only: true,
                id: "veil-rootfs-0".into(),
            },
        ];
        config.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/d/vsock.sock".into(),
        });
        let mut net = veil_vmm::NetConfig::new("veiltap0");
        net.mac = Some("02:00:c6:12:00:02".parse().unwrap());
        net.mtu = 1450;
        config.nets = vec![net];
        let args: Vec<String> = veil_args(&config, "nobody")
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let text = args.join(" ");
        for expected in [
            "run --jail --kernel /k",
            "--initrd /i",
            "--vcpus 2 --mem-mib 512",
            "--console /d/console.log",
            "--disk /d/init.img,ro,id=veil-init-data --disk ,ro,id=veil-rootfs-0",
            "--net tap=veiltap0,mtu=1450,mac=02:00:c6:12:00:02",
            "--vsock-cid 3 --vsock-uds /d/vsock.sock",
            "--jail-user nobody --jail-max-memory-mib 1792 --control-fd 3",
        ] {
            assert!(text.contains(expected), "{expected:?} not in {text}");
        }
        config.disks[0].path = Some("/d/a,b".into());
        assert!(veil_args(&config, "nobody").is_err());
    }
}
