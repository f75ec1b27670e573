//! Translation of the OCI runtime spec containerd writes (`config.json`, exec process JSON)
//! into the agent's subset (Kata's `oci.proto`).
//!
//! What the agent cannot do in a sandbox is dropped here with a log line rather than failing
//! the pod: cgroup mounts (libcontainer manages cgroups), host hooks, host LSM labels. Bind
//! mounts are carried by `volumes` (the sandbox shares no host file system).

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime as rt;
use veil_agent::protocols::oci;

/// Mount types the agent performs; others are skipped.
const PASSED_MOUNT_TYPES: &[&str] = &["proc", "tmpfs", "sysfs", "devpts", "mqueue"];

/// Errors reading specs.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading OCI spec {path}: {source}")]
    Load {
        path: String,
        source: oci_spec::OciSpecError,
    },
    #[error("OCI spec {path} has no process")]
    NoProcess { path: String },
    #[error("exec process spec is not valid OCI process JSON: {0}")]
    ExecJson(serde_json::Error),
}

/// Reads `<bundle>/config.json`.
pub fn load_bundle(bundle: &Path) -> Result<rt::Spec, SpecError> {
    let path = bundle.join("config.json");
    rt::Spec::load(&path).map_err(|source| SpecError::Load {
        path: path.display().to_string(),
        source,
    })
}

/// The spec's annotations (empty when it has none).
pub fn annotations(spec: &rt::Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

/// The agent's spec for a container whose root the agent mounts at `root_path`.
pub fn container(spec: &rt::Spec, root_path: &str, bundle: &Path) -> Result<oci::Spec, SpecError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::NoProcess {
            path: bundle.join("config.json").display().to_string(),
        })?;
    let mut out = oci::Spec::new();
    out.Version = spec.version().clone();
    out.Process = protobuf::MessageField::some(self::process(process));
    let mut root = oci::Root::new();
    root.Path = root_path.to_string();
    root.Readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    out.Root = protobuf::MessageField::some(root);
    out.Hostname = spec.hostname().clone().unwrap_or_default();
    out.Mounts = spec.mounts().iter().flatten().filter_map(mount).collect();
    out.Annotations = annotations(spec);
    if let Some(linux) = spec.linux() {
        let linux = self::linux(linux);
        if !linux.Namespaces.is_empty() && !linux.Namespaces.iter().any(|n| n.Type == "uts") {
            // The container shares the pod's UTS namespace, the guest's: its hostname is the
            // one CreateSandbox set.
            out.Hostname.clear();
        }
        out.Linux = protobuf::MessageField::some(linux);
    }
    if spec.hooks().is_some() {
        // Hooks name host programs; the agent runs hooks inside the guest, where they are not.
        tracing::info!("OCI hooks not passed to the sandbox (host programs)");
    }
    Ok(out)
}

/// The agent's form of the spec's Linux section: what the guest can honour, the namespaces
/// it makes (never a host namespace path: the pod's containers share the guest's network),
/// seccomp, masked and read-only paths, sysctls and cgroup limits.
fn linux(l: &rt::Linux) -> oci::Linux {
    let json = serde_json::to_value(l).unwrap_or_default();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let mut out = oci::Linux::new();
    for ns in l.namespaces().iter().flatten() {
        let kind = wire_name(&ns.typ());
        if kind == "network" {
            // The guest's network namespace is the pod's.
            continue;
        }
        let mut n = oci::LinuxNamespace::new();
        n.Type = kind;
        out.Namespaces.push(n);
    }
    out.MaskedPaths = strings(&json["maskedPaths"]);
    out.ReadonlyPaths = strings(&json["readonlyPaths"]);
    out.Sysctl = l.sysctl().clone().unwrap_or_default().into_iter().collect();
    if let Some(seccomp) = json.get("seccomp").filter(|v| !v.is_null()) {
        out.Seccomp = protobuf::MessageField::some(self::seccomp(seccomp));
    }
    if let Some(r) = json.get("resources").filter(|v| !v.is_null()) {
        out.Resources = protobuf::MessageField::some(resources(r));
    }
    out
}

fn seccomp(v: &serde_json::Value) -> oci::LinuxSeccomp {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut out = oci::LinuxSeccomp::new();
    out.DefaultAction = text(&v["defaultAction"]);
    if v.get("defaultErrnoRet").is_some_and(|e| !e.is_null()) {
        tracing::info!(
            "seccomp defaultErrnoRet not carried by the agent API; the default errno applies"
        );
    }
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().map(text).collect()
    };
    out.Architectures = list(&v["architectures"]);
    out.Flags = list(&v["flags"]);
    for rule in v["syscalls"].as_array().into_iter().flatten() {
        let mut sc = oci::LinuxSyscall::new();
        sc.Names = list(&rule["names"]);
        sc.Action = text(&rule["action"]);
        if let Some(errno) = rule["errnoRet"].as_u64() {
            sc.ErrnoRet = Some(oci::linux_syscall::ErrnoRet::Errnoret(errno as u32));
        }
        for arg in rule["args"].as_array().into_iter().flatten() {
            let mut a = oci::LinuxSeccompArg::new();
            a.Index = arg["index"].as_u64().unwrap_or_default();
            a.Value = arg["value"].as_u64().unwrap_or_default();
            a.ValueTwo = arg["valueTwo"].as_u64().unwrap_or_default();
            a.Op = text(&arg["op"]);
            sc.Args.push(a);
        }
        out.Syscalls.push(sc);
    }
    out
}

/// Cgroup limits (CRI's resources at create, and UpdateTask).
pub fn resources(v: &serde_json::Value) -> oci::LinuxResources {
    let int = |v: &serde_json::Value| v.as_i64().unwrap_or_default();
    let uint = |v: &serde_json::Value| v.as_u64().unwrap_or_default();
    let mut out = oci::LinuxResources::new();
    for d in v["devices"].as_array().into_iter().flatten() {
        let mut rule = oci::LinuxDeviceCgroup::new();
        rule.Allow = d["allow"].as_bool().unwrap_or(false);
        rule.Type = d["type"].as_str().unwrap_or_default().to_string();
        rule.Major = d["major"].as_i64().unwrap_or(-1);
        rule.Minor = d["minor"].as_i64().unwrap_or(-1);
        rule.Access = d["access"].as_str().unwrap_or_default().to_string();
        out.Devices.push(rule);
    }
    if let Some(m) = v.get("memory").filter(|m| m.is_object()) {
        let mut mem = oci::LinuxMemory::new();
        mem.Limit = int(&m["limit"]);
        mem.Reservation = int(&m["reservation"]);
        mem.Swap = int(&m["swap"]);
        mem.Swappiness = uint(&m["swappiness"]);
        mem.DisableOOMKiller = m["disableOOMKiller"].as_bool().unwrap_or(false);
        out.Memory = protobuf::MessageField::some(mem);
    }
    if let Some(c) = v.get("cpu").filter(|c| c.is_object()) {
        let mut cpu = oci::LinuxCPU::new();
        cpu.Shares = uint(&c["shares"]);
        cpu.Quota = int(&c["quota"]);
        cpu.Period = uint(&c["period"]);
        cpu.Cpus = c["cpus"].as_str().unwrap_or_default().to_string();
        cpu.Mems = c["mems"].as_str().unwrap_or_default().to_string();
        out.CPU = protobuf::MessageField::some(cpu);
    }
    if let Some(p) = v.get("pids").filter(|p| p.is_object()) {
        let mut pids = oci::LinuxPids::new();
        pids.Limit = int(&p["limit"]);
        out.Pids = protobuf::MessageField::some(pids);
    }
    out
}

/// Parses the process JSON containerd sends with an exec request.
pub fn exec_process(json: &[u8]) -> Result<oci::Process, SpecError> {
    let p: rt::Process = serde_json::from_slice(json).map_err(SpecError::ExecJson)?;
    Ok(process(&p))
}

/// The agent's form of an OCI process.
pub fn process(p: &rt::Process) -> oci::Process {
    let mut out = oci::Process::new();
    out.Terminal = p.terminal().unwrap_or(false);
    if let Some(size) = p.console_size() {
        let mut b = oci::Box::new();
        b.Height = size.height() as u32;
        b.Width = size.width() as u32;
        out.ConsoleSize = protobuf::MessageField::some(b);
    }
    let mut user = oci::User::new();
    user.UID = p.user().uid();
    user.GID = p.user().gid();
    user.AdditionalGids = p.user().additional_gids().clone().unwrap_or_default();
    user.Username = p.user().username().clone().unwrap_or_default();
    out.User = protobuf::MessageField::some(user);
    out.Args = p.args().clone().unwrap_or_default();
    out.Env = p.env().clone().unwrap_or_default();
    out.Cwd = p.cwd().display().to_string();
    if let Some(caps) = p.capabilities() {
        let mut c = oci::LinuxCapabilities::new();
        c.Bounding = cap_names(caps.bounding());
        c.Effective = cap_names(caps.effective());
        c.Inheritable = cap_names(caps.inheritable());
        c.Permitted = cap_names(caps.permitted());
        c.Ambient = cap_names(caps.ambient());
        out.Capabilities = protobuf::MessageField::some(c);
    }
    out.Rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            let mut l = oci::POSIXRlimit::new();
            l.Type = wire_name(&r.typ());
            l.Hard = r.hard();
            l.Soft = r.soft();
            l
        })
        .collect();
    out.NoNewPrivileges = p.no_new_privileges().unwrap_or(false);
    // oom_score_adj is not passed: CRI's negative values (pause -998, Guaranteed -997) need
    // CAP_SYS_RESOURCE, which a process sandbox's agent may lack; the agent honours it when sent.
    if p.apparmor_profile().is_some() || p.selinux_label().is_some() {
        // Host LSM labels name host policy; the guest kernel has neither LSM.
        tracing::info!("AppArmor/SELinux labels not passed to the sandbox");
    }
    out
}

/// A mount the agent can perform, or `None` (logged) for one it cannot.
fn mount(m: &rt::Mount) -> Option<oci::Mount> {
    let kind = m.typ().clone().unwrap_or_default();
    let bind = m
        .options()
        .iter()
        .flatten()
        .any(|o| o == "bind" || o == "rbind");
    if bind {
        // Carried by `volumes` (copies and guest tmpfs volumes).
        return None;
    }
    if !PASSED_MOUNT_TYPES.contains(&kind.as_str()) {
        tracing::info!(
            destination = %m.destination().display(),
            kind = %kind,
            "mount not passed to the sandbox (it shares no host file system)"
        );
        return None;
    }
    let mut out = oci::Mount::new();
    out.destination = m.destination().display().to_string();
    out.source = m
        .source()
        .as_ref()
        .map(|s| s.display().to_string())
        .unwrap_or_else(|| kind.clone());
    out.type_ = kind;
    out.options = m.options().clone().unwrap_or_default();
    Some(out)
}

fn cap_names(set: &Option<rt::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = set.iter().flatten().map(wire_name).collect();
    names.sort();
    names
}

/// The spec's own spelling of an enum value (`CAP_CHOWN`, `RLIMIT_NOFILE`).
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 1, "gid": 2, "additionalGids": [3]},
            "args": ["sh", "-c", "echo hi"],
            "env": ["PATH=/bin"],
            "cwd": "/work",
            "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "pod",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/x/hosts", "options": ["rbind", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "size=65536k"]}
        ],
        "annotations": {"io.kubernetes.cri.container-type": "sandbox"}
    }"#;

    fn bundle() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
        dir
    }

    #[test]
    fn container_spec_carries_process_root_and_kernel_mounts_only() {
        let dir = bundle();
        let spec = load_bundle(dir.path()).unwrap();
        let out = container(&spec, "/run/c/rootfs", dir.path()).unwrap();
        let p = out.Process.as_ref().unwrap();
        assert_eq!(p.Args, ["sh", "-c", "echo hi"]);
        assert_eq!(p.Cwd, "/work");
        assert_eq!(p.User.UID, 1);
        assert_eq!(p.User.AdditionalGids, [3]);
        assert_eq!(p.Capabilities.Bounding, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(p.Rlimits[0].Type, "RLIMIT_NOFILE");
        assert_eq!((p.Rlimits[0].Hard, p.Rlimits[0].Soft), (1024, 512));
        assert!(p.NoNewPrivileges);
        assert_eq!(out.Root.Path, "/run/c/rootfs");
        assert!(out.Root.Readonly);
        assert_eq!(out.Hostname, "pod");
        let dests: Vec<&str> = out.Mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(dests, ["/proc", "/dev/shm"]);
        assert_eq!(out.Mounts[1].options, ["nosuid", "size=65536k"]);
        assert_eq!(
            annotations(&spec)["io.kubernetes.cri.container-type"],
            "sandbox"
        );
    }

    #[test]
    fn missing_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_bundle(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn exec_process_json() {
        let p =
            exec_process(br#"{"args":["ls"],"cwd":"/","user":{"uid":0,"gid":0},"terminal":true}"#)
                .unwrap();
        assert_eq!(p.Args, ["ls"]);
        assert!(p.Terminal);
        assert!(exec_process(b"not json").is_err());
    }
}
