//! UpdateInterface and ListInterfaces: links and their addresses.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::spec::{format_mac, InterfaceSpec};
use super::{connect, netlink, NetworkError};
use crate::protocols::types;

/// Finds the link the host means, renames it, sets its MTU, replaces its addresses and brings
/// it up; answers with the interface as it now is.
pub async fn update_interface(iface: &types::Interface) -> Result<types::Interface, NetworkError> {
    let spec = InterfaceSpec::from_proto(iface)?;
    let handle = connect()?;
    let links = dump_links(&handle).await?;
    let link = find_link(&links, &spec)?;
    let index = link.header.index;
    let current_name = link_name(link).unwrap_or_default();
    if current_name != spec.name {
        // A link is renamed only while down.
        set_link(
            &handle,
            LinkUnspec::new_with_index(index).down().build(),
            "bring down",
        )
        .await?;
        let rename = LinkUnspec::new_with_index(index)
            .name(spec.name.clone())
            .build();
        set_link(
            &handle,
            rename,
            &format!("rename {current_name} to {}", spec.name),
        )
        .await?;
    }
    if let Some(mtu) = spec.mtu {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        set_link(&handle, msg, &format!("set MTU {mtu} on {}", spec.name)).await?;
    }
    for old in dump_addresses(&handle, Some(index)).await? {
        // IPv6 link-local addresses belong to the link itself (neighbour discovery).
        if address_of(&old).is_some_and(is_link_local_v6) {
            continue;
        }
        handle
            .address()
            .del(old)
            .execute()
            .await
            .map_err(netlink(format!("remove an old address of {}", spec.name)))?;
    }
    for (ip, prefix) in &spec.addresses {
        handle
            .address()
            .add(index, *ip, *prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("add {ip}/{prefix} to {}", spec.name)))?;
    }
    set_link(
        &handle,
        LinkUnspec::new_with_index(index).up().build(),
        "bring up",
    )
    .await?;
    tracing::info!(name = %spec.name, addresses = spec.addresses.len(), "interface configured");

    let links = dump_links(&handle).await?;
    let link = links
        .iter()
        .find(|l| l.header.index == index)
        .ok_or_else(|| NetworkError::NoSuchLink(spec.name.clone()))?;
    let addresses = dump_addresses(&handle, Some(index)).await?;
    Ok(to_proto(link, &addresses))
}

/// Every link with its addresses.
pub async fn list_interfaces() -> Result<Vec<types::Interface>, NetworkError> {
    let handle = connect()?;
    let links = dump_links(&handle).await?;
    let addresses = dump_addresses(&handle, None).await?;
    Ok(links
        .iter()
        .map(|link| {
            let own: Vec<AddressMessage> = addresses
                .iter()
                .filter(|a| a.header.index == link.header.index)
                .cloned()
                .collect();
            to_proto(link, &own)
        })
        .collect())
}

/// Link indexes by name, for routes.
pub(crate) async fn link_indexes(handle: &Handle) -> Result<Vec<(String, u32)>, NetworkError> {
    Ok(dump_links(handle)
        .await?
        .iter()
        .filter_map(|l| Some((link_name(l)?, l.header.index)))
        .collect())
}

async fn set_link(handle: &Handle, msg: LinkMessage, action: &str) -> Result<(), NetworkError> {
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(netlink(action))
}

async fn dump_links(handle: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list links"))
}

async fn dump_addresses(
    handle: &Handle,
    index: Option<u32>,
) -> Result<Vec<AddressMessage>, NetworkError> {
    let mut request = handle.address().get();
    if let Some(index) = index {
        request = request.set_link_index_filter(index);
    }
    request
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list addresses"))
}

fn find_link<'a>(
    links: &'a [LinkMessage],
    spec: &InterfaceSpec,
) -> Result<&'a LinkMessage, NetworkError> {
    let found = match spec.hw_addr {
        Some(mac) => links.iter().find(|l| link_mac(l) == Some(&mac[..])),
        None => links
            .iter()
            .find(|l| link_name(l).as_deref() == Some(spec.device.as_str())),
    };
    found.ok_or_else(|| {
        NetworkError::NoSuchLink(match spec.hw_addr {
            Some(mac) => format!("with MAC {}", format_mac(&mac)),
            None => format!("named {:?}", spec.device),
        })
    })
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

/// The interface's own address: `Local` for IPv4 (`Address` is the peer on point-to-point
/// links), `Address` for IPv6.
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn is_link_local_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn to_proto(link: &LinkMessage, addresses: &[AddressMessage]) -> types::Interface {
    let mut iface = types::Interface::new();
    let name = link_name(link).unwrap_or_default();
    iface.device = name.clone();
    iface.name = name;
    iface.hwAddr = link_mac(link).map(format_mac).unwrap_or_default();
    iface.raw_flags = link.header.flags.bits();
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Mtu(mtu) => iface.mtu = u64::from(*mtu),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        iface.type_ = kind.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    if iface.type_.is_empty() && link.header.flags.contains(LinkFlags::Loopback) {
        iface.type_ = "loopback".into();
    }
    for msg in addresses {
        let Some(ip) = address_of(msg) else { continue };
        let mut addr = types::IPAddress::new();
        addr.family = if ip.is_ipv4() {
            types::IPFamily::v4
        } else {
            types::IPFamily::v6
        }
        .into();
        addr.address = ip.to_string();
        addr.mask = msg.header.prefix_len.to_string();
        iface.IPAddresses.push(addr);
    }
    iface
}
