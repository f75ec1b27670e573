//! Requests a client builds to run a container from a block-device layer, and a policy that
//! allows everything: shared by the agent's integration tests and the benchmark harness
//! (`benches/`), which drive a real agent the same way.

use sha2::{Digest, Sha256};

use crate::protocols::{agent, oci, types};

pub use crate::policy::ALLOW_ALL;

/// The lowercase hex SHA-256 of `text`: the HOST_DATA a policy is bound to.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// An OCI process running `args` with `PATH=/bin` in `/`.
pub fn process(args: &[&str]) -> oci::Process {
    let mut p = oci::Process::new();
    p.Args = args.iter().map(|s| s.to_string()).collect();
    p.Env = vec!["PATH=/bin".into()];
    p.Cwd = "/".into();
    p
}

/// A CreateContainerRequest for `id` with its ext4 root on the block device `device`, `/proc`
/// and a `/tmp` tmpfs mounted, and hostname `veil-test`.
pub fn create_request(id: &str, device: &str, args: &[&str]) -> agent::CreateContainerRequest {
    let root_path = format!("/run/kata-containers/{id}/rootfs");
    let mut storage = agent::Storage::new();
    storage.driver = "blk".into();
    storage.source = device.into();
    storage.fstype = "ext4".into();
    storage.mount_point = root_path.clone();
    let mut root = oci::Root::new();
    root.Path = root_path;
    let mut proc_mount = oci::Mount::new();
    proc_mount.destination = "/proc".into();
    proc_mount.type_ = "proc".into();
    proc_mount.source = "proc".into();
    let mut tmp_mount = oci::Mount::new();
    tmp_mount.destination = "/tmp".into();
    tmp_mount.type_ = "tmpfs".into();
    tmp_mount.source = "tmpfs".into();
    tmp_mount.options = vec!["nosuid".into(), "mode=1777".into()];
    let mut spec = oci::Spec::new();
    spec.Root = protobuf::MessageField::some(root);
    spec.Process = protobuf::MessageField::some(process(args));
    spec.Hostname = "veil-test".into();
    spec.Mounts = vec![proc_mount, tmp_mount];
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = id.into();
    req.exec_id = id.into();
    req.storages = vec![storage];
    req.OCI = protobuf::MessageField::some(spec);
    req
}

/// A request for up to 4 KiB of process `exec_id`'s output in container `id`.
pub fn read_req(id: &str, exec_id: &str) -> agent::ReadStreamRequest {
    let mut r = agent::ReadStreamRequest::new();
    r.container_id = id.into();
    r.exec_id = exec_id.into();
    r.len = 4096;
    r
}

/// A whole file for CopyFile at `path` (below Kata's shared-containers directory).
pub fn copy_file_request(path: &str, data: &[u8]) -> agent::CopyFileRequest {
    let mut r = agent::CopyFileRequest::new();
    r.path = path.into();
    r.data = data.to_vec();
    r.file_size = data.len() as i64;
    r.file_mode = 0o100644;
    r.dir_mode = 0o755;
    r
}

/// A bind mount of `source` (an agent-managed path) at `destination`.
pub fn bind_mount(source: &str, destination: &str, read_only: bool) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.type_ = "bind".into();
    m.source = source.into();
    m.destination = destination.into();
    m.options = vec!["rbind".into(), if read_only { "ro" } else { "rw" }.into()];
    m
}

/// An `emptyDir` as a guest tmpfs shared by the pod: its storage and where it is mounted.
pub fn ephemeral_volume(name: &str) -> (agent::Storage, String) {
    let mount_point = format!("/run/kata-containers/sandbox/ephemeral/{name}");
    let mut s = agent::Storage::new();
    s.driver = "ephemeral".into();
    s.source = "tmpfs".into();
    s.fstype = "tmpfs".into();
    s.mount_point = mount_point.clone();
    (s, mount_point)
}

/// An UpdateInterfaceRequest giving the NIC with MAC `mac` the name `name`, `mtu` and the IPv4
/// address `address/prefix` (what a shim tells the agent about a pod's CNI interface).
pub fn interface_request(
    name: &str,
    mac: &str,
    address: std::net::Ipv4Addr,
    prefix: u8,
    mtu: u16,
) -> agent::UpdateInterfaceRequest {
    let mut ip = types::IPAddress::new();
    ip.family = types::IPFamily::v4.into();
    ip.address = address.to_string();
    ip.mask = prefix.to_string();
    let mut iface = types::Interface::new();
    iface.name = name.into();
    iface.hwAddr = mac.into();
    iface.mtu = mtu.into();
    iface.IPAddresses = vec![ip];
    let mut r = agent::UpdateInterfaceRequest::new();
    r.interface = protobuf::MessageField::some(iface);
    r
}

/// An UpdateRoutesRequest with the routes a CNI namespace lists for `device` with address
/// `address/prefix`: the link-scope subnet route (with its source) and the default route via
/// `gateway` (UpdateRoutes replaces the main table, subnet route included).
pub fn routes_request(
    device: &str,
    address: std::net::Ipv4Addr,
    prefix: u8,
    gateway: std::net::Ipv4Addr,
) -> agent::UpdateRoutesRequest {
    let network = u32::from(address) & (u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
    let mut subnet = types::Route::new();
    subnet.dest = format!("{}/{prefix}", std::net::Ipv4Addr::from(network));
    subnet.device = device.into();
    subnet.source = address.to_string();
    // RT_SCOPE_LINK: the subnet is reached directly on the link.
    subnet.scope = 253;
    subnet.family = types::IPFamily::v4.into();
    let mut default = types::Route::new();
    default.dest = "default".into();
    default.gateway = gateway.to_string();
    default.device = device.into();
    default.family = types::IPFamily::v4.into();
    let mut routes = agent::Routes::new();
    routes.Routes = vec![subnet, default];
    let mut r = agent::UpdateRoutesRequest::new();
    r.routes = protobuf::MessageField::some(routes);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn routes_are_the_subnet_then_the_default() {
        let r = routes_request(
            "eth0",
            Ipv4Addr::new(198, 18, 1, 7),
            23,
            Ipv4Addr::new(198, 18, 0, 1),
        );
        let routes = &r.routes.Routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].dest, "198.18.0.0/23");
        assert_eq!(routes[0].source, "198.18.1.7");
        assert_eq!(routes[0].scope, 253);
        assert_eq!(routes[1].dest, "default");
        assert_eq!(routes[1].gateway, "198.18.0.1");
        assert!(routes.iter().all(|r| r.device == "eth0"));
    }

    #[test]
    fn the_interface_carries_mac_address_and_mtu() {
        let r = interface_request(
            "eth1",
            "02:00:00:00:00:01",
            Ipv4Addr::new(10, 0, 0, 2),
            24,
            1400,
        );
        let iface = r.interface.as_ref().unwrap();
        assert_eq!(
            (iface.name.as_str(), iface.hwAddr.as_str(), iface.mtu),
            ("eth1", "02:00:00:00:00:01", 1400)
        );
        assert_eq!(iface.IPAddresses[0].address, "10.0.0.2");
        assert_eq!(iface.IPAddresses[0].mask, "24");
    }
}
