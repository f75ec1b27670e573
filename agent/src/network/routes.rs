//! UpdateRoutes and ListRoutes: the main routing table.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::links::link_indexes;
use super::spec::{routes_from_proto, RouteSpec};
use super::{connect, netlink, NetworkError};
use crate::protocols::types;

/// The main table's id.
const MAIN_TABLE: u8 = 254;

/// Replaces the routes of every device the request names with the requested ones (routes
/// without a gateway first, since gateways must be reachable); answers with the table.
pub async fn update_routes(routes: &[types::Route]) -> Result<Vec<types::Route>, NetworkError> {
    let specs = routes_from_proto(routes)?;
    let handle = connect()?;
    let indexes = link_indexes(&handle).await?;
    let index_of = |device: &str| {
        indexes
            .iter()
            .find(|(name, _)| name == device)
            .map(|(_, index)| *index)
            .ok_or_else(|| NetworkError::NoSuchLink(format!("named {device:?}")))
    };
    let mut targets = Vec::new();
    for spec in &specs {
        targets.push((index_of(&spec.device)?, spec));
    }
    // Only the main table: the local table's routes are the addresses themselves.
    for old in dump_routes(&handle).await? {
        let Some(oif) = output_interface(&old) else {
            continue;
        };
        if old.header.table != MAIN_TABLE {
            continue;
        }
        // IPv6 routes the kernel made for the link (fe80::/64, multicast) stay.
        let v6_kernel = old.header.address_family == AddressFamily::Inet6
            && old.header.protocol == RouteProtocol::Kernel;
        if v6_kernel || !targets.iter().any(|(index, _)| *index == oif) {
            continue;
        }
        handle
            .route()
            .del(old)
            .execute()
            .await
            .map_err(netlink("remove an old route"))?;
    }
    targets.sort_by_key(|(_, spec)| spec.gateway.is_some());
    for (index, spec) in targets {
        let msg = route_message(index, spec)?;
        handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("add the route to {}", describe(spec))))?;
    }
    tracing::info!(routes = routes.len(), "routes configured");
    list_with(&handle).await
}

/// The main table, IPv4 and IPv6.
pub async fn list_routes() -> Result<Vec<types::Route>, NetworkError> {
    let handle = connect()?;
    list_with(&handle).await
}

async fn list_with(handle: &Handle) -> Result<Vec<types::Route>, NetworkError> {
    let names = link_indexes(handle).await?;
    let name_of = |index: u32| {
        names
            .iter()
            .find(|(_, i)| *i == index)
            .map(|(name, _)| name.clone())
            .unwrap_or_default()
    };
    Ok(dump_routes(handle)
        .await?
        .iter()
        .filter(|r| r.header.table == MAIN_TABLE)
        .map(|r| to_proto(r, &name_of))
        .collect())
}

async fn dump_routes(handle: &Handle) -> Result<Vec<RouteMessage>, NetworkError> {
    let mut all: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list IPv4 routes"))?;
    let v6: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list IPv6 routes"))?;
    all.extend(v6);
    Ok(all)
}

fn describe(spec: &RouteSpec) -> String {
    match (spec.dest, spec.gateway) {
        (Some((ip, prefix)), _) => format!("{ip}/{prefix} dev {}", spec.device),
        (None, Some(gw)) => format!("default via {gw} dev {}", spec.device),
        (None, None) => format!("default dev {}", spec.device),
    }
}

fn route_message(index: u32, spec: &RouteSpec) -> Result<RouteMessage, NetworkError> {
    // rtnetlink does not export its builder error type; only its message is needed.
    fn bad(spec: &RouteSpec) -> impl Fn(&dyn std::fmt::Display) -> NetworkError + '_ {
        move |e| NetworkError::Invalid(format!("route to {}: {e}", describe(spec)))
    }
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .output_interface(index)
        .scope(RouteScope::from(spec.scope));
    let unspecified = if spec.v6 {
        IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
    };
    let (dest, prefix) = spec.dest.unwrap_or((unspecified, 0));
    builder = builder
        .destination_prefix(dest, prefix)
        .map_err(|e| bad(spec)(&e))?;
    if let Some(gateway) = spec.gateway {
        builder = builder.gateway(gateway).map_err(|e| bad(spec)(&e))?;
    }
    if let Some(source) = spec.source {
        builder = builder.pref_source(source).map_err(|e| bad(spec)(&e))?;
    }
    Ok(builder.build())
}

fn output_interface(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::from(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::from(*v6)),
        _ => None,
    }
}

fn to_proto(route: &RouteMessage, name_of: &dyn Fn(u32) -> String) -> types::Route {
    let mut out = types::Route::new();
    out.family = if route.header.address_family == AddressFamily::Inet6 {
        types::IPFamily::v6
    } else {
        types::IPFamily::v4
    }
    .into();
    out.scope = u32::from(u8::from(route.header.scope));
    out.flags = route.header.flags.bits();
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(addr) => {
                if let Some(ip) = ip_of(addr) {
                    out.dest = format!("{ip}/{}", route.header.destination_prefix_length);
                }
            }
            RouteAttribute::Gateway(addr) => {
                out.gateway = ip_of(addr).map(|ip| ip.to_string()).unwrap_or_default()
            }
            RouteAttribute::PrefSource(addr) => {
                out.source = ip_of(addr).map(|ip| ip.to_string()).unwrap_or_default()
            }
            RouteAttribute::Oif(index) => out.device = name_of(*index),
            _ => {}
        }
    }
    out
}
