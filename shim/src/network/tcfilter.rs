//! Kata's `tcfilter` model: the CNI's interface and the tap each get an ingress qdisc with a
//! match-all u32 filter whose action redirects every frame to the other's egress, so the pair
//! behaves like one wire without a bridge.

use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::Handle;

use super::NetworkError;

/// The ingress qdisc's handle (ffff:).
const INGRESS_PARENT: u32 = 0xffff_0000;
/// ETH_P_ALL (every protocol), in network byte order as the kernel reads `tcm_info`
/// (rtnetlink passes the value through unchanged).
pub const ALL_PROTOCOLS: u16 = (libc::ETH_P_ALL as u16).to_be();

/// Redirects everything arriving on `a` out of `b`, and back.
pub(crate) async fn connect(handle: &Handle, a: u32, b: u32) -> Result<(), NetworkError> {
    for (from, to) in [(a, b), (b, a)] {
        handle
            .qdisc()
            .add(from as i32)
            .ingress()
            .execute()
            .await
            .map_err(super::netlink(format!(
                "add an ingress qdisc on link {from}"
            )))?;
        handle
            .traffic_filter(from as i32)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(ALL_PROTOCOLS)
            .redirect(to)
            .map_err(super::netlink(format!("build the redirect {from} -> {to}")))?
            .execute()
            .await
            .map_err(super::netlink(format!("redirect link {from} to {to}")))?;
    }
    Ok(())
}

/// Removes the ingress qdisc (and with it the filter) from `link`.
pub(crate) async fn disconnect(handle: &Handle, link: u32) -> Result<(), NetworkError> {
    let mut request = handle.qdisc().del(link as i32);
    let header = &mut request.message_mut().header;
    header.parent = TcHandle::INGRESS;
    header.handle = TcHandle::from(INGRESS_PARENT);
    request.execute().await.map_err(super::netlink(format!(
        "remove the ingress qdisc of link {link}"
    )))
}
