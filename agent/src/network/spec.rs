//! Checking the host's network requests and turning them into typed values.

use std::net::IpAddr;

use super::NetworkError;
use crate::protocols::types;

/// Most addresses one UpdateInterface may set.
pub const MAX_ADDRESSES: usize = 64;
/// Most routes one UpdateRoutes may set.
pub const MAX_ROUTES: usize = 256;
/// MTU bounds: IPv4's minimum to the largest an Ethernet device takes.
const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

fn invalid(what: String) -> NetworkError {
    NetworkError::Invalid(what)
}

/// Which link an UpdateInterface is about, and what it should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterfaceSpec {
    /// The link's MAC, when given: the way the link is found (guest names are not stable).
    pub hw_addr: Option<[u8; 6]>,
    /// Name to find the link by when there is no MAC (`device`, else `name`).
    pub device: String,
    /// Name the link should have.
    pub name: String,
    pub mtu: Option<u32>,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// One route of an UpdateRoutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteSpec {
    /// Destination and prefix length; `None` is the default route.
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub source: Option<IpAddr>,
    pub scope: u8,
    /// Whether the route is IPv6 (from the addresses, else the family field).
    pub v6: bool,
}

/// Interface names: 1-15 bytes, no '/', NUL or whitespace (the kernel's rules).
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {name:?} is not an interface name"
        )))
    }
}

pub(crate) fn parse_mac(text: &str) -> Result<[u8; 6], NetworkError> {
    let bad = || invalid(format!("hwAddr {text:?} is not a MAC address"));
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

pub(crate) fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, NetworkError> {
    text.parse()
        .map_err(|_| invalid(format!("{field} {text:?} is not an IP address")))
}

fn check_prefix(field: &str, ip: IpAddr, prefix: u8) -> Result<(), NetworkError> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid(format!(
            "{field} prefix /{prefix} is longer than {max}"
        )));
    }
    Ok(())
}

/// `address` plus a decimal prefix length in `mask`.
fn parse_address(addr: &types::IPAddress) -> Result<(IpAddr, u8), NetworkError> {
    let ip = parse_ip("address", &addr.address)?;
    let prefix: u8 = addr.mask.parse().map_err(|_| {
        invalid(format!(
            "mask {:?} of {} is not a prefix length",
            addr.mask, addr.address
        ))
    })?;
    check_prefix("address", ip, prefix)?;
    Ok((ip, prefix))
}

/// "a.b.c.d/len" (or a bare address, a host route).
fn parse_dest(text: &str) -> Result<(IpAddr, u8), NetworkError> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => {
            let ip = parse_ip("dest", ip)?;
            let prefix = prefix
                .parse()
                .map_err(|_| invalid(format!("dest {text:?} has no valid prefix length")))?;
            (ip, prefix)
        }
        None => {
            let ip = parse_ip("dest", text)?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    check_prefix("dest", ip, prefix)?;
    Ok((ip, prefix))
}

impl InterfaceSpec {
    pub(crate) fn from_proto(iface: &types::Interface) -> Result<Self, NetworkError> {
        let hw_addr = match iface.hwAddr.as_str() {
            "" => None,
            mac => Some(parse_mac(mac)?),
        };
        check_name("name", &iface.name)?;
        let device = if iface.device.is_empty() {
            iface.name.clone()
        } else {
            check_name("device", &iface.device)?;
            iface.device.clone()
        };
        let mtu = match iface.mtu {
            0 => None,
            mtu if MTU_RANGE.contains(&mtu) => Some(mtu as u32),
            mtu => {
                return Err(invalid(format!(
                    "mtu {mtu} is outside {}..={}",
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                )))
            }
        };
        if iface.IPAddresses.len() > MAX_ADDRESSES {
            return Err(invalid(format!(
                "{} addresses; at most {MAX_ADDRESSES}",
                iface.IPAddresses.len()
            )));
        }
        let addresses = iface
            .IPAddresses
            .iter()
            .map(parse_address)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            hw_addr,
            device,
            name: iface.name.clone(),
            mtu,
            addresses,
        })
    }
}

impl RouteSpec {
    pub(crate) fn from_proto(route: &types::Route) -> Result<Self, NetworkError> {
        check_name("route device", &route.device)?;
        let dest = match route.dest.as_str() {
            "" | "default" => None,
            dest => Some(parse_dest(dest)?),
        };
        let gateway = match route.gateway.as_str() {
            "" => None,
            gw => Some(parse_ip("gateway", gw)?),
        };
        let source = match route.source.as_str() {
            "" => None,
            src => Some(parse_ip("source", src)?),
        };
        let scope = u8::try_from(route.scope)
            .map_err(|_| invalid(format!("scope {} is not a route scope", route.scope)))?;
        let family_v6 = route.family.enum_value() == Ok(types::IPFamily::v6);
        let v6 = dest
            .map(|(ip, _)| ip.is_ipv6())
            .or(gateway.map(|ip| ip.is_ipv6()))
            .unwrap_or(family_v6);
        for ip in [dest.map(|(ip, _)| ip), gateway, source]
            .into_iter()
            .flatten()
        {
            if ip.is_ipv6() != v6 {
                return Err(invalid(format!(
                    "route to {:?} mixes IPv4 and IPv6 addresses",
                    route.dest
                )));
            }
        }
        Ok(Self {
            dest,
            gateway,
            device: route.device.clone(),
            source,
            scope,
            v6,
        })
    }
}

pub(crate) fn routes_from_proto(routes: &[types::Route]) -> Result<Vec<RouteSpec>, NetworkError> {
    if routes.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "{} routes; at most {MAX_ROUTES}",
            routes.len()
        )));
    }
    routes.iter().map(RouteSpec::from_proto).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, mac: &str, addrs: &[(&str, &str)]) -> types::Interface {
        let mut i = types::Interface::new();
        i.name = name.into();
        i.hwAddr = mac.into();
        i.mtu = 1500;
        for (a, m) in addrs {
            let mut ip = types::IPAddress::new();
            ip.address = (*a).into();
            ip.mask = (*m).into();
            i.IPAddresses.push(ip);
        }
        i
    }

    #[test]
    fn interfaces_parse() {
        let spec = InterfaceSpec::from_proto(&iface(
            "eth0",
            "02:00:c6:12:00:02",
            &[("198.18.0.2", "24"), ("fd00::2", "64")],
        ))
        .unwrap();
        assert_eq!(spec.hw_addr, Some([2, 0, 0xc6, 0x12, 0, 2]));
        assert_eq!(spec.device, "eth0");
        assert_eq!(spec.mtu, Some(1500));
        assert_eq!(spec.addresses.len(), 2);
        assert_eq!(spec.addresses[0], ("198.18.0.2".parse().unwrap(), 24));
    }

    #[test]
    fn bad_interfaces_are_refused_naming_the_field() {
        for (i, needle) in [
            (iface("", "", &[]), "name \"\""),
            (iface("a/b", "", &[]), "name \"a/b\""),
            (iface("eth0", "02:00", &[]), "hwAddr \"02:00\""),
            (iface("eth0", "", &[("198.18.0.300", "24")]), "198.18.0.300"),
            (iface("eth0", "", &[("198.18.0.2", "33")]), "/33"),
            (iface("eth0", "", &[("198.18.0.2", "x")]), "mask \"x\""),
        ] {
            let err = InterfaceSpec::from_proto(&i).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        }
        let mut big = iface("eth0", "", &[]);
        big.mtu = 70000;
        assert!(InterfaceSpec::from_proto(&big)
            .unwrap_err()
            .to_string()
            .contains("mtu 70000"));
        let many: Vec<(String, String)> = (0..=MAX_ADDRESSES)
            .map(|i| (format!("10.0.{}.{}", i / 256, i % 256), "32".to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(a, m)| (a.as_str(), m.as_str())).collect();
        assert!(InterfaceSpec::from_proto(&iface("eth0", "", &refs)).is_err());
    }

    fn route(dest: &str, gw: &str, dev: &str) -> types::Route {
        let mut r = types::Route::new();
        r.dest = dest.into();
        r.gateway = gw.into();
        r.device = dev.into();
        r
    }

    #[test]
    fn routes_parse() {
        let specs = routes_from_proto(&[
            route("198.18.0.0/24", "", "eth0"),
            route("", "198.18.0.1", "eth0"),
            route("fd00::/64", "", "eth0"),
        ])
        .unwrap();
        assert_eq!(specs[0].dest, Some(("198.18.0.0".parse().unwrap(), 24)));
        assert_eq!(specs[1].dest, None);
        assert_eq!(specs[1].gateway, Some("198.18.0.1".parse().unwrap()));
        assert!(!specs[1].v6);
        assert!(specs[2].v6);
    }

    #[test]
    fn bad_routes_are_refused() {
        for (r, needle) in [
            (route("198.18.0.0/40", "", "eth0"), "/40"),
            (route("nope/24", "", "eth0"), "\"nope\""),
            (route("", "198.18.0.1", ""), "route device"),
            (route("fd00::/64", "198.18.0.1", "eth0"), "mixes"),
        ] {
            let err = routes_from_proto(&[r]).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let many = vec![route("", "198.18.0.1", "eth0"); MAX_ROUTES + 1];
        assert!(routes_from_proto(&many).is_err());
    }
}
