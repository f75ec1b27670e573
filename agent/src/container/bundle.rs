//! The OCI bundle libcontainer runs: the host's spec (Kata's `oci.proto` form) checked field
//! by field and written as runc's `config.json`. A field the guest cannot honour is refused by
//! name, never dropped; paths the host names are confined to what the agent controls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use protobuf::Message;
use serde_json::{json, Map, Value};

use super::paths::relative_inside;
use super::ContainerError;
use crate::protocols::oci;

/// Most entries accepted in any one list of the spec (mounts, hooks, paths, syscalls...).
const MAX_ENTRIES: usize = 1024;
/// Kata's logical prefix for files the host copies into the guest (`CopyFile`) and for
/// sandbox-wide volumes; the agent maps it onto its own state directory.
pub const SHARED_PREFIX: &str = "/run/kata-containers/shared/containers/";
/// Kata's logical prefix for `ephemeral` (guest tmpfs) volumes.
pub const EPHEMERAL_PREFIX: &str = "/run/kata-containers/sandbox/ephemeral/";
/// Namespaces a container may ask for (created new; paths are host paths and refused).
const NAMESPACES: &[&str] = &["pid", "ipc", "uts", "mount", "network", "user", "cgroup"];
/// Namespaces a container gets when its spec names none.
const DEFAULT_NAMESPACES: &[&str] = &["pid", "ipc", "uts", "mount"];
/// Kernel file systems a spec may mount, besides binds of agent-managed directories.
const MOUNT_TYPES: &[&str] = &[
    "proc", "tmpfs", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "bind",
];

/// Where the agent keeps what the spec refers to.
pub struct BundlePaths<'a> {
    /// The container's merged root (overlay), host view.
    pub rootfs: &'a Path,
    /// The cgroup path, relative to the cgroup v2 mount (`/veil/<id>` or below the agent's).
    pub cgroups_path: &'a str,
    /// The agent's directory for [`SHARED_PREFIX`].
    pub shared_dir: &'a Path,
    /// The agent's directory for [`EPHEMERAL_PREFIX`].
    pub ephemeral_dir: &'a Path,
}

fn invalid(msg: impl Into<String>) -> ContainerError {
    ContainerError::InvalidSpec(msg.into())
}

fn unsupported(msg: impl Into<String>) -> ContainerError {
    ContainerError::Unsupported(msg.into())
}

fn bounded<T>(what: &str, list: &[T]) -> Result<(), ContainerError> {
    if list.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "{what}: {} entries, at most {MAX_ENTRIES}",
            list.len()
        )));
    }
    Ok(())
}

/// Refuses fields of `msg` this subset of Kata's proto does not model (they arrive as unknown
/// fields): `names` maps their numbers to the names in Kata's `oci.proto`.
fn refuse_unknown(
    msg: &dyn protobuf::MessageDyn,
    names: &[(u32, &str)],
) -> Result<(), ContainerError> {
    if let Some((number, _)) = msg.special_fields_dyn().unknown_fields().iter().next() {
        let name = names
            .iter()
            .find(|(n, _)| *n == number)
            .map_or("unknown field", |(_, name)| name);
        return Err(unsupported(format!(
            "OCI spec field {name} (number {number} in {})",
            msg.descriptor_dyn().name()
        )));
    }
    Ok(())
}

/// The runc `config.json` for `spec`, with the root, cgroup and volume paths the agent chose.
pub fn config_json(spec: &oci::Spec, at: &BundlePaths<'_>) -> Result<Value, ContainerError> {
    let process = spec.Process.as_ref().ok_or_else(|| invalid("no Process"))?;
    if spec.Hostname.len() > 64 || spec.Hostname.contains('\0') {
        return Err(invalid(format!("hostname {:?}", spec.Hostname)));
    }
    bounded("Mounts", &spec.Mounts)?;
    let mut config = Map::new();
    config.insert("ociVersion".into(), json!("1.0.2"));
    config.insert("process".into(), process_json(process)?);
    config.insert(
        "root".into(),
        json!({
            "path": at.rootfs,
            "readonly": spec.Root.as_ref().is_some_and(|r| r.Readonly),
        }),
    );
    if !spec.Hostname.is_empty() {
        config.insert("hostname".into(), json!(spec.Hostname));
    }
    let mounts = spec
        .Mounts
        .iter()
        .map(|m| mount_json(m, at))
        .collect::<Result<Vec<_>, _>>()?;
    config.insert("mounts".into(), Value::Array(mounts));
    if let Some(hooks) = spec.Hooks.as_ref() {
        config.insert("hooks".into(), hooks_json(hooks)?);
    }
    config.insert("annotations".into(), json!(spec.Annotations));
    let default_linux = oci::Linux::new();
    let linux = spec.Linux.as_ref().unwrap_or(&default_linux);
    config.insert("linux".into(), linux_json(linux, at)?);
    Ok(Value::Object(config))
}

/// A process (the init process, or one for ExecProcess) as runc's JSON.
pub fn process_json(p: &oci::Process) -> Result<Value, ContainerError> {
    if p.Args.is_empty() {
        return Err(invalid("process has no Args"));
    }
    bounded("Args", &p.Args)?;
    bounded("Env", &p.Env)?;
    bounded("Rlimits", &p.Rlimits)?;
    if let Some(bad) = p.Args.iter().chain(&p.Env).find(|s| s.contains('\0')) {
        return Err(invalid(format!("NUL byte in Args or Env entry {bad:?}")));
    }
    if let Some(bad) = p.Env.iter().find(|e| !e.contains('=')) {
        return Err(invalid(format!("environment entry {bad:?} has no '='")));
    }
    if !p.ApparmorProfile.is_empty() {
        return Err(unsupported(format!(
            "Process.ApparmorProfile {:?}: the guest kernel has no AppArmor",
            p.ApparmorProfile
        )));
    }
    if !p.SelinuxLabel.is_empty() {
        return Err(unsupported(format!(
            "Process.SelinuxLabel {:?}: the guest kernel has no SELinux",
            p.SelinuxLabel
        )));
    }
    let cwd = if p.Cwd.is_empty() { "/" } else { &p.Cwd };
    relative_inside("process cwd", cwd)?;
    let user = p.User.as_ref();
    // A terminal is the agent's pty, handed over as the process's stdio (libcontainer would
    // want a console socket to send one back): the process is told it has none.
    let mut out = json!({
        "terminal": false,
        "user": {
            "uid": user.map_or(0, |u| u.UID),
            "gid": user.map_or(0, |u| u.GID),
            "additionalGids": user.map_or_else(Vec::new, |u| u.AdditionalGids.clone()),
        },
        "args": p.Args,
        "env": p.Env,
        "cwd": cwd,
        "noNewPrivileges": p.NoNewPrivileges,
        "rlimits": p.Rlimits.iter().map(|r| json!({
            "type": r.Type, "hard": r.Hard, "soft": r.Soft,
        })).collect::<Vec<_>>(),
    });
    if let Some(size) = p.ConsoleSize.as_ref() {
        out["consoleSize"] = json!({"height": size.Height, "width": size.Width});
    }
    if let Some(c) = p.Capabilities.as_ref() {
        out["capabilities"] = json!({
            "bounding": c.Bounding, "effective": c.Effective, "inheritable": c.Inheritable,
            "permitted": c.Permitted, "ambient": c.Ambient,
        });
    }
    if p.OOMScoreAdj != 0 {
        if !(-1000..=1000).contains(&p.OOMScoreAdj) {
            return Err(invalid(format!("OOMScoreAdj {}", p.OOMScoreAdj)));
        }
        out["oomScoreAdj"] = json!(p.OOMScoreAdj);
    }
    Ok(out)
}

/// Maps a bind source the host named onto the agent's directories: only files the host
/// copied in (`CopyFile`) and sandbox volumes can be bound, never the guest's own tree.
pub fn bind_source(source: &str, at: &BundlePaths<'_>) -> Result<PathBuf, ContainerError> {
    let (prefix, dir) = if source.starts_with(SHARED_PREFIX) {
        (SHARED_PREFIX, at.shared_dir)
    } else if source.starts_with(EPHEMERAL_PREFIX) {
        (EPHEMERAL_PREFIX, at.ephemeral_dir)
    } else {
        return Err(ContainerError::InvalidPath {
            what: "bind mount source (must be below /run/kata-containers/shared/containers/ \
                   or /run/kata-containers/sandbox/ephemeral/)",
            path: source.to_string(),
        });
    };
    let rel = relative_inside(
        "bind mount source",
        &format!("/{}", &source[prefix.len()..]),
    )?;
    if rel.as_os_str().is_empty() {
        return Err(ContainerError::InvalidPath {
            what: "bind mount source (names no file)",
            path: source.to_string(),
        });
    }
    Ok(dir.join(rel))
}

fn mount_json(m: &oci::Mount, at: &BundlePaths<'_>) -> Result<Value, ContainerError> {
    relative_inside("mount destination", &m.destination)?;
    bounded("mount options", &m.options)?;
    let is_bind = m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
    if !is_bind && !MOUNT_TYPES.contains(&m.type_.as_str()) {
        return Err(unsupported(format!(
            "mount type {:?} at {} (supported: {MOUNT_TYPES:?})",
            m.type_, m.destination
        )));
    }
    if m.options.iter().any(|o| o.contains('\0')) {
        return Err(invalid(format!(
            "NUL in mount options of {}",
            m.destination
        )));
    }
    let source = if is_bind {
        bind_source(&m.source, at)?.display().to_string()
    } else {
        m.source.clone()
    };
    Ok(json!({
        "destination": m.destination,
        "type": if is_bind { "bind" } else { m.type_.as_str() },
        "source": source,
        "options": m.options,
    }))
}

fn hooks_json(hooks: &oci::Hooks) -> Result<Value, ContainerError> {
    refuse_unknown(
        hooks,
        &[
            (4, "Hooks.CreateRuntime"),
            (5, "Hooks.CreateContainer"),
            (6, "Hooks.StartContainer"),
        ],
    )?;
    let list = |what: &str, list: &[oci::Hook]| -> Result<Value, ContainerError> {
        bounded(what, list)?;
        list.iter()
            .map(|h| {
                relative_inside("hook path", &h.Path)?;
                bounded("hook args", &h.Args)?;
                bounded("hook env", &h.Env)?;
                let mut hook = json!({"path": h.Path, "args": h.Args, "env": h.Env});
                if h.Timeout > 0 {
                    hook["timeout"] = json!(h.Timeout);
                }
                Ok(hook)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    };
    Ok(json!({
        "prestart": list("Hooks.Prestart", &hooks.Prestart)?,
        "poststart": list("Hooks.Poststart", &hooks.Poststart)?,
        "poststop": list("Hooks.Poststop", &hooks.Poststop)?,
    }))
}

fn linux_json(l: &oci::Linux, at: &BundlePaths<'_>) -> Result<Value, ContainerError> {
    refuse_unknown(l, &[(13, "Linux.IntelRdt")])?;
    if !l.MountLabel.is_empty() {
        return Err(unsupported(format!(
            "Linux.MountLabel {:?}: the guest kernel has no SELinux",
            l.MountLabel
        )));
    }
    bounded("Namespaces", &l.Namespaces)?;
    bounded("Devices", &l.Devices)?;
    bounded("MaskedPaths", &l.MaskedPaths)?;
    bounded("ReadonlyPaths", &l.ReadonlyPaths)?;
    bounded("UIDMappings", &l.UIDMappings)?;
    bounded("GIDMappings", &l.GIDMappings)?;
    if l.Sysctl.len() > MAX_ENTRIES {
        return Err(invalid("too many Sysctl entries"));
    }
    // A spec naming no namespaces gets runc's usual set; the network namespace stays the
    // guest's, which is the pod's.
    let requested: Vec<oci::LinuxNamespace> = if l.Namespaces.is_empty() {
        DEFAULT_NAMESPACES
            .iter()
            .map(|t| oci::LinuxNamespace {
                Type: t.to_string(),
                ..Default::default()
            })
            .collect()
    } else {
        l.Namespaces.clone()
    };
    if !requested.iter().any(|ns| ns.Type == "mount") {
        // Without one, the container's mounts and pivot_root would happen in the agent's.
        return Err(unsupported(
            "a container without its own mount namespace (Linux.Namespaces lacks \"mount\")",
        ));
    }
    let mut namespaces = Vec::new();
    for ns in &requested {
        if !NAMESPACES.contains(&ns.Type.as_str()) {
            return Err(unsupported(format!("namespace type {:?}", ns.Type)));
        }
        if !ns.Path.is_empty() {
            // A path names a namespace of the host (e.g. the pause container's); in the guest
            // the pod's containers share the guest's network namespace instead.
            return Err(unsupported(format!(
                "joining the {} namespace at {:?}: host namespace paths mean nothing in the guest",
                ns.Type, ns.Path
            )));
        }
        namespaces.push(json!({"type": ns.Type}));
    }
    for path in l.MaskedPaths.iter().chain(&l.ReadonlyPaths) {
        relative_inside("masked or read-only path", path)?;
    }
    let mut devices = Vec::new();
    for d in &l.Devices {
        relative_inside("device path", &d.Path)?;
        if !d.Path.starts_with("/dev/") {
            return Err(ContainerError::InvalidPath {
                what: "device path (must be below /dev)",
                path: d.Path.clone(),
            });
        }
        devices.push(json!({
            "path": d.Path, "type": d.Type, "major": d.Major, "minor": d.Minor,
            "fileMode": d.FileMode, "uid": d.UID, "gid": d.GID,
        }));
    }
    let id_map = |m: &[oci::LinuxIDMapping]| -> Vec<Value> {
        m.iter()
            .map(|m| json!({"hostID": m.HostID, "containerID": m.ContainerID, "size": m.Size}))
            .collect()
    };
    let propagation = match l.RootfsPropagation.as_str() {
        "" => None,
        p @ ("private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable"
        | "runbindable") => Some(p),
        other => return Err(invalid(format!("RootfsPropagation {other:?}"))),
    };
    let mut out = json!({
        "namespaces": namespaces,
        "devices": devices,
        "maskedPaths": l.MaskedPaths,
        "readonlyPaths": l.ReadonlyPaths,
        "sysctl": l.Sysctl.iter().collect::<HashMap<_, _>>(),
        "cgroupsPath": at.cgroups_path,
        "uidMappings": id_map(&l.UIDMappings),
        "gidMappings": id_map(&l.GIDMappings),
    });
    if let Some(p) = propagation {
        out["rootfsPropagation"] = json!(p);
    }
    if let Some(r) = l.Resources.as_ref() {
        out["resources"] = resources_json(r)?;
    }
    if let Some(s) = l.Seccomp.as_ref() {
        out["seccomp"] = seccomp_json(s)?;
    }
    Ok(out)
}

/// Cgroup limits (CreateContainer's spec and UpdateContainer) as runc's JSON; zero means
/// unset, as the proto cannot tell them apart.
pub fn resources_json(r: &oci::LinuxResources) -> Result<Value, ContainerError> {
    refuse_unknown(
        r,
        &[
            (5, "LinuxResources.BlockIO"),
            (6, "LinuxResources.HugepageLimits"),
            (7, "LinuxResources.Network"),
        ],
    )?;
    bounded("device cgroup rules", &r.Devices)?;
    let mut out = Map::new();
    let devices: Vec<Value> = r
        .Devices
        .iter()
        .map(|d| {
            let mut rule = json!({"allow": d.Allow, "access": d.Access});
            if !d.Type.is_empty() {
                rule["type"] = json!(d.Type);
            }
            if d.Major >= 0 && (d.Major != 0 || d.Minor != 0) {
                rule["major"] = json!(d.Major);
            }
            if d.Minor >= 0 && (d.Major != 0 || d.Minor != 0) {
                rule["minor"] = json!(d.Minor);
            }
            rule
        })
        .collect();
    out.insert("devices".into(), Value::Array(devices));
    if let Some(m) = r.Memory.as_ref() {
        if m.Kernel > 0 || m.KernelTCP > 0 {
            return Err(unsupported(
                "LinuxMemory.Kernel/KernelTCP: cgroup v2 has no kernel memory limit",
            ));
        }
        let mut mem = Map::new();
        for (key, value) in [
            ("limit", m.Limit),
            ("reservation", m.Reservation),
            ("swap", m.Swap),
        ] {
            if value != 0 {
                mem.insert(key.into(), json!(value));
            }
        }
        if m.Swappiness != 0 {
            mem.insert("swappiness".into(), json!(m.Swappiness));
        }
        if m.DisableOOMKiller {
            mem.insert("disableOOMKiller".into(), json!(true));
        }
        out.insert("memory".into(), Value::Object(mem));
    }
    if let Some(c) = r.CPU.as_ref() {
        let mut cpu = Map::new();
        if c.Shares != 0 {
            cpu.insert("shares".into(), json!(c.Shares));
        }
        if c.Quota != 0 {
            cpu.insert("quota".into(), json!(c.Quota));
        }
        if c.Period != 0 {
            cpu.insert("period".into(), json!(c.Period));
        }
        if c.RealtimeRuntime != 0 || c.RealtimePeriod != 0 {
            return Err(unsupported(
                "LinuxCPU.RealtimeRuntime/RealtimePeriod: cgroup v2 has no realtime limits",
            ));
        }
        for (key, value) in [("cpus", &c.Cpus), ("mems", &c.Mems)] {
            if !value.is_empty() {
                if value.len() > 256
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
                {
                    return Err(invalid(format!("LinuxCPU.{key} {value:?}")));
                }
                cpu.insert(key.into(), json!(value));
            }
        }
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(p) = r.Pids.as_ref() {
        if p.Limit != 0 {
            out.insert("pids".into(), json!({"limit": p.Limit}));
        }
    }
    Ok(Value::Object(out))
}

fn seccomp_json(s: &oci::LinuxSeccomp) -> Result<Value, ContainerError> {
    bounded("seccomp syscalls", &s.Syscalls)?;
    bounded("seccomp architectures", &s.Architectures)?;
    let syscalls = s
        .Syscalls
        .iter()
        .map(|sc| {
            bounded("seccomp syscall names", &sc.Names)?;
            bounded("seccomp syscall args", &sc.Args)?;
            let mut rule = json!({
                "names": sc.Names,
                "action": sc.Action,
                "args": sc.Args.iter().map(|a| json!({
                    "index": a.Index, "value": a.Value, "valueTwo": a.ValueTwo, "op": a.Op,
                })).collect::<Vec<_>>(),
            });
            if let Some(oci::linux_syscall::ErrnoRet::Errnoret(errno)) = sc.ErrnoRet {
                rule["errnoRet"] = json!(errno);
            }
            Ok(rule)
        })
        .collect::<Result<Vec<_>, ContainerError>>()?;
    let mut out = json!({
        "defaultAction": s.DefaultAction,
        "architectures": s.Architectures,
        "syscalls": syscalls,
    });
    if !s.Flags.is_empty() {
        out["flags"] = json!(s.Flags);
    }
    Ok(out)
}

/// Parses runc JSON into libcontainer's spec type, naming the field serde refused.
pub fn to_spec(config: Value) -> Result<oci_spec::runtime::Spec, ContainerError> {
    serde_json::from_value(config).map_err(|e| invalid(format!("OCI spec: {e}")))
}

/// Decodes `bytes` as a spec (used by the fuzz target and tests): never panics.
pub fn decode_spec(bytes: &[u8]) -> Result<oci::Spec, ContainerError> {
    oci::Spec::parse_from_bytes(bytes).map_err(|e| invalid(format!("decoding: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> BundlePaths<'static> {
        BundlePaths {
            rootfs: Path::new("/run/a/rootfs"),
            cgroups_path: "/veil/a",
            shared_dir: Path::new("/run/a/shared"),
            ephemeral_dir: Path::new("/run/a/eph"),
        }
    }

    fn spec() -> oci::Spec {
        let mut p = oci::Process::new();
        p.Args = vec!["/bin/sh".into()];
        let mut s = oci::Spec::new();
        s.Process = protobuf::MessageField::some(p);
        s
    }

    #[test]
    fn a_plain_spec_becomes_a_libcontainer_spec_with_the_default_namespaces() {
        let json = config_json(&spec(), &paths()).unwrap();
        let parsed = to_spec(json).unwrap();
        let kinds: Vec<String> = parsed
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .iter()
            .flatten()
            .map(|n| format!("{:?}", n.typ()))
            .collect();
        assert_eq!(kinds.len(), 4, "{kinds:?}");
    }

    #[test]
    fn lsm_labels_namespace_paths_and_foreign_binds_are_refused_by_name() {
        let mut s = spec();
        s.Process.as_mut().unwrap().ApparmorProfile = "p".into();
        let err = config_json(&s, &paths()).unwrap_err().to_string();
        assert!(err.contains("ApparmorProfile"), "{err}");

        let mut s = spec();
        s.Process.as_mut().unwrap().SelinuxLabel = "l".into();
        assert!(config_json(&s, &paths())
            .unwrap_err()
            .to_string()
            .contains("SelinuxLabel"));

        let mut s = spec();
        let mut ns = oci::LinuxNamespace::new();
        ns.Type = "mount".into();
        ns.Path = "/proc/1/ns/mnt".into();
        s.Linux.mut_or_insert_default().Namespaces = vec![ns];
        assert!(config_json(&s, &paths())
            .unwrap_err()
            .to_string()
            .contains("/proc/1/ns/mnt"));

        let mut s = spec();
        let mut m = oci::Mount::new();
        m.destination = "/x".into();
        m.type_ = "bind".into();
        m.source = "/etc".into();
        s.Mounts = vec![m];
        assert!(config_json(&s, &paths())
            .unwrap_err()
            .to_string()
            .contains("bind mount source"));
    }

    #[test]
    fn kata_fields_outside_the_subset_are_refused_by_name() {
        // LinuxResources field 5 (BlockIO), an empty message.
        let r = oci::LinuxResources::parse_from_bytes(&[0x2a, 0x00]).unwrap();
        let err = resources_json(&r).unwrap_err().to_string();
        assert!(err.contains("LinuxResources.BlockIO"), "{err}");
        // Linux field 13 (IntelRdt).
        let mut s = spec();
        s.Linux =
            protobuf::MessageField::some(oci::Linux::parse_from_bytes(&[0x6a, 0x00]).unwrap());
        let err = config_json(&s, &paths()).unwrap_err().to_string();
        assert!(err.contains("Linux.IntelRdt"), "{err}");
    }

    #[test]
    fn bind_sources_map_onto_the_agents_directories() {
        let p = paths();
        assert_eq!(
            bind_source(&format!("{SHARED_PREFIX}pod/cm"), &p).unwrap(),
            Path::new("/run/a/shared/pod/cm")
        );
        assert_eq!(
            bind_source(&format!("{EPHEMERAL_PREFIX}cache"), &p).unwrap(),
            Path::new("/run/a/eph/cache")
        );
        assert!(bind_source(&format!("{SHARED_PREFIX}../x"), &p).is_err());
        assert!(bind_source(SHARED_PREFIX, &p).is_err());
    }
}
