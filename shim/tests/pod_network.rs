//! The pod network's host side without a VM: in a network namespace private to the test (a
//! veth with an address standing in for the CNI's interface), setup makes the tap and the tc
//! redirects both ways and reads what the guest must be told; teardown removes exactly what
//! setup made.

use std::path::PathBuf;

use containerd_shim_veil_v2::network::{PodNetwork, TAP_NAME};
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

async fn link_index(handle: &Handle, name: &str) -> Option<u32> {
    let mut links = handle.link().get().match_name(name.into()).execute();
    links
        .try_next()
        .await
        .ok()
        .flatten()
        .map(|l| l.header.index)
}

async fn ingress_qdiscs(handle: &Handle, index: u32) -> usize {
    let all: Vec<_> = handle.qdisc().get().execute().try_collect().await.unwrap();
    all.iter()
        .filter(|q| {
            q.header.index == index as i32
                && q.header.parent == rtnetlink::packet_route::tc::TcHandle::INGRESS
        })
        .count()
}

#[test]
fn a_cni_namespace_gets_a_tap_wired_both_ways_and_loses_it_on_teardown() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        veil_tests::skip_or_fail("network namespaces, veth and taps need root and /dev/net/tun");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: unshare changes only this thread's namespace membership.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let netns = PathBuf::from(format!("/proc/{tid}/ns/net"));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);

                // Host-network-like: no interface with an address, nothing to wire.
                assert!(PodNetwork::setup(&netns).await.unwrap().is_none());
                assert!(link_index(&handle, TAP_NAME).await.is_none());

                handle
                    .link()
                    .add(LinkVeth::new("eth0", "peer0").build())
                    .execute()
                    .await
                    .unwrap();
                let eth0 = link_index(&handle, "eth0").await.unwrap();
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(eth0).mtu(1400).up().build())
                    .execute()
                    .await
                    .unwrap();
                handle
                    .address()
                    .add(eth0, "198.18.0.2".parse().unwrap(), 24)
                    .execute()
                    .await
                    .unwrap();

                let network = PodNetwork::setup(&netns).await.unwrap().expect("wired");
                let tap = link_index(&handle, TAP_NAME).await.expect("tap made");
                assert_eq!(ingress_qdiscs(&handle, eth0).await, 1);
                assert_eq!(ingress_qdiscs(&handle, tap).await, 1);
                // Each side's filter matches every protocol (ETH_P_ALL, network byte order).
                for index in [eth0, tap] {
                    let filters: Vec<_> = handle
                        .traffic_filter(index as i32)
                        .get()
                        .root()
                        .execute()
                        .try_collect()
                        .await
                        .unwrap();
                    assert!(!filters.is_empty(), "no filter on link {index}");
                    for f in &filters {
                        assert_eq!(
                            f.header.info & 0xffff,
                            u32::from((libc::ETH_P_ALL as u16).to_be()),
                            "{f:?}"
                        );
                    }
                }
                let config = network.net_config().unwrap();
                assert_eq!((config.tap.as_str(), config.mtu), (TAP_NAME, 1400));
                assert!(config.mac.is_some());

                // The VMM side: a device opened on the tap from inside the namespace.
                let opened = network
                    .run_in_netns(|| veil_devices_probe(TAP_NAME))
                    .unwrap();
                assert!(
                    opened,
                    "the tap could not be attached with virtio-net headers"
                );

                network.teardown().await;
                assert!(
                    link_index(&handle, TAP_NAME).await.is_none(),
                    "tap left behind"
                );
                assert_eq!(
                    ingress_qdiscs(&handle, eth0).await,
                    0,
                    "redirect left behind"
                );
                assert!(
                    link_index(&handle, "eth0").await.is_some(),
                    "the CNI's link is not ours to remove"
                );
            });
    })
    .join()
    .unwrap();
}

/// Whether a virtio-net device can be built on `tap` (the VMM's own open path).
fn veil_devices_probe(tap: &str) -> bool {
    let config = veil_vmm::NetConfig::new(tap);
    veil_devices::virtio::net::Net::new(config).is_ok()
}
