//! The pod's network for a VM sandbox, the way Kata's default `tcfilter` model does it: in the
//! network namespace the CNI plugin prepared (the pod's OCI spec names it), a tap is created
//! and tied to the CNI's interface with tc redirects both ways; the VMM attaches to the tap by
//! name (`VmConfig::nets`, opened in that namespace); once the agent is up it is told the
//! interface's addresses, MTU and routes (UpdateInterface / UpdateRoutes), which it applies to
//! the guest NIC found by the CNI interface's MAC. Pods without a namespace of their own
//! (host network) get no device. Everything is removed with the sandbox.

mod netns;
mod tap;
mod tcfilter;

pub use tcfilter::ALL_PROTOCOLS;

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::Handle;
use veil_agent::client::AgentClient;
use veil_agent::protocols::{agent, types};
use veil_vmm::{MacAddr, NetConfig};

/// The tap's name inside the pod's namespace.
pub const TAP_NAME: &str = "veiltap0";

/// Errors setting up or removing the pod's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot enter the pod's network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a runtime for netlink: {0}")]
    Runtime(std::io::Error),
    #[error("the network namespace thread panicked")]
    Panicked,
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("netlink: cannot {action}: {source}")]
    Netlink {
        action: String,
        source: rtnetlink::Error,
    },
    #[error("cannot create tap {name}: {source}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error("reading the pod's interfaces: {0}")]
    Inspect(#[from] veil_agent::network::NetworkError),
    #[error("the pod's network namespace has {0} interfaces with addresses; one is supported")]
    Interfaces(usize),
    #[error("the CNI interface {name} has MAC {mac:?}, not a unicast Ethernet address")]
    Mac { name: String, mac: String },
    #[error("agent {call}: {source}")]
    Agent {
        call: &'static str,
        source: ttrpc::Error,
    },
}

fn netlink(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let action = action.into();
    move |source| NetworkError::Netlink { action, source }
}

/// The namespace's one CNI interface wired to a tap, and what the guest must be told.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    netns: PathBuf,
    /// The CNI interface as the namespace has it (name, MAC, MTU, addresses).
    interface: types::Interface,
    /// Its routes.
    routes: Vec<types::Route>,
}

impl PodNetwork {
    /// Creates the tap in `netns` and connects it to the CNI's interface. `None` when the
    /// namespace has no interface with an address (nothing to connect). On error nothing is
    /// left behind.
    pub async fn setup(netns: &Path) -> Result<Option<Self>, NetworkError> {
        let path = netns.to_path_buf();
        let found = tokio::task::spawn_blocking(move || {
            netns::block_on_in(&path, || async { inspect_and_wire().await })
        })
        .await
        .map_err(|_| NetworkError::Panicked)??;
        Ok(found.map(|(interface, routes)| {
            tracing::info!(
                netns = %netns.display(),
                interface = %interface.name,
                addresses = interface.IPAddresses.len(),
                routes = routes.len(),
                "pod network wired to {TAP_NAME}"
            );
            Self {
                netns: netns.to_path_buf(),
                interface,
                routes,
            }
        }))
    }

    /// The VMM's device: the tap, with the CNI interface's MAC and MTU.
    pub fn net_config(&self) -> Result<NetConfig, NetworkError> {
        let mac: MacAddr = self
            .interface
            .hwAddr
            .parse()
            .map_err(|_| NetworkError::Mac {
                name: self.interface.name.clone(),
                mac: self.interface.hwAddr.clone(),
            })?;
        let mut config = NetConfig::new(TAP_NAME);
        config.mac = Some(mac);
        config.mtu = u16::try_from(self.interface.mtu).unwrap_or(u16::MAX);
        Ok(config)
    }

    /// The namespace the VMM must be in when it opens the tap.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Runs `work` (building the VM) on a thread inside the pod's namespace.
    pub fn run_in_netns<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetworkError> {
        netns::run_in(&self.netns, move || Ok(work()))
    }

    /// Tells the agent the interface and its routes.
    pub async fn configure_guest(&self, client: &AgentClient) -> Result<(), NetworkError> {
        let ctx = || ttrpc::context::with_timeout(0);
        let mut req = agent::UpdateInterfaceRequest::new();
        req.interface = protobuf::MessageField::some(self.interface.clone());
        client
            .agent
            .update_interface(ctx(), &req)
            .await
            .map_err(|source| NetworkError::Agent {
                call: "UpdateInterface",
                source,
            })?;
        let mut routes = agent::Routes::new();
        routes.Routes = self.routes.clone();
        let mut req = agent::UpdateRoutesRequest::new();
        req.routes = protobuf::MessageField::some(routes);
        client
            .agent
            .update_routes(ctx(), &req)
            .await
            .map_err(|source| NetworkError::Agent {
                call: "UpdateRoutes",
                source,
            })?;
        Ok(())
    }

    /// Removes the tap and the CNI interface's redirect (the namespace itself is the CNI's).
    pub async fn teardown(&self) {
        let path = self.netns.clone();
        let name = self.interface.name.clone();
        let result = tokio::task::spawn_blocking(move || {
            netns::block_on_in(&path, move || async move { unwire(&name).await })
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::info!(netns = %self.netns.display(), "pod network removed"),
            Ok(Err(e)) => {
                tracing::warn!(netns = %self.netns.display(), "pod network teardown: {e}")
            }
            Err(e) => tracing::warn!("pod network teardown task: {e}"),
        }
    }
}

/// The network namespace a pod's OCI spec names, if it has one of its own: CRI pods get the
/// CNI's; host-network pods have none (no entry, or one without a path).
pub fn netns_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
}

fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connect)?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(netlink(format!("look up link {name}"))(e)),
    }
}

/// In the pod's namespace: finds the CNI interface, creates the tap with its MTU and wires
/// the two together. Undoes its own steps on failure.
async fn inspect_and_wire() -> Result<Option<(types::Interface, Vec<types::Route>)>, NetworkError> {
    let candidates: Vec<types::Interface> = veil_agent::network::list_interfaces()
        .await?
        .into_iter()
        .filter(|i| i.type_ != "loopback" && i.name != TAP_NAME && !i.IPAddresses.is_empty())
        .collect();
    let mut interface = match candidates.len() {
        0 => return Ok(None),
        1 => candidates.into_iter().next().expect("one"),
        n => return Err(NetworkError::Interfaces(n)),
    };
    // The guest's kernel makes its own IPv6 link-local address.
    interface
        .IPAddresses
        .retain(|a| !a.address.to_ascii_lowercase().starts_with("fe80:"));
    let routes: Vec<types::Route> = veil_agent::network::list_routes()
        .await?
        .into_iter()
        // Link-local IPv6 routes are the guest kernel's own business.
        .filter(|r| r.device == interface.name && !r.dest.starts_with("fe80:"))
        .collect();
    let handle = connect()?;
    let cni = link_index(&handle, &interface.name).await?.ok_or_else(|| {
        NetworkError::Inspect(veil_agent::network::NetworkError::NoSuchLink(
            interface.name.clone(),
        ))
    })?;
    tap::create(TAP_NAME)?;
    let wired = async {
        let tap = link_index(&handle, TAP_NAME).await?.ok_or_else(|| {
            NetworkError::Inspect(veil_agent::network::NetworkError::NoSuchLink(
                TAP_NAME.into(),
            ))
        })?;
        let mtu = u32::try_from(interface.mtu).unwrap_or(1500);
        handle
            .link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(tap)
                    .mtu(mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("bring {TAP_NAME} up")))?;
        tcfilter::connect(&handle, cni, tap).await
    }
    .await;
    if let Err(e) = wired {
        let _ = unwire(&interface.name).await;
        return Err(e);
    }
    Ok(Some((interface, routes)))
}

/// Deletes the tap (its qdisc goes with it) and the CNI interface's ingress qdisc.
async fn unwire(cni_name: &str) -> Result<(), NetworkError> {
    let handle = connect()?;
    if let Some(cni) = link_index(&handle, cni_name).await? {
        // Absent when wiring failed before it was added.
        let _ = tcfilter::disconnect(&handle, cni).await;
    }
    if let Some(tap) = link_index(&handle, TAP_NAME).await? {
        handle
            .link()
            .del(tap)
            .execute()
            .await
            .map_err(netlink(format!("delete {TAP_NAME}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"namespaces": namespaces},
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_namespace_comes_from_the_spec() {
        let cri = spec(serde_json::json!([
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1234"},
        ]));
        assert_eq!(
            netns_path(&cri),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        // Host network: no network entry, or one without a path (a new, empty namespace
        // that nothing wired: nothing to connect either).
        assert_eq!(
            netns_path(&spec(serde_json::json!([{"type": "pid"}]))),
            None
        );
        assert_eq!(
            netns_path(&spec(serde_json::json!([{"type": "network"}]))),
            None
        );
    }
}
