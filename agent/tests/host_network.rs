//! UpdateInterface / UpdateRoutes / ListInterfaces / ListRoutes through a real agent process
//! whose network namespace is private to the test (made by the test thread, inherited by the
//! agent it spawns, gone with both): a veth pair stands in for the pod's NIC.

mod common;

use common::*;
use futures::TryStreamExt;
use rtnetlink::LinkVeth;
use veil_agent::client::AgentClient;
use veil_agent::protocols::{agent, types};

async fn ready_agent(policy: &str) -> (AgentProcess, AgentClient) {
    let mut agent = AgentProcess::start(&sha256_hex(policy));
    let client = agent.connect().await;
    let mut set = agent::SetPolicyRequest::new();
    set.policy = policy.into();
    client.agent.set_policy(ctx(), &set).await.unwrap();
    (agent, client)
}

/// Runs `body` on a thread in a new network namespace, with a veth pair `veth-a`/`veth-b`.
fn in_private_netns<F: std::future::Future<Output = ()>>(
    body: impl FnOnce() -> F + Send + 'static,
) {
    std::thread::spawn(move || {
        // SAFETY: unshare changes only this thread's namespace membership.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET)"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            handle
                .link()
                .add(LinkVeth::new("veth-a", "veth-b").build())
                .execute()
                .await
                .unwrap();
            let mut links = handle.link().get().match_name("veth-b".into()).execute();
            let peer = links.try_next().await.unwrap().unwrap();
            handle
                .link()
                .set(
                    rtnetlink::LinkUnspec::new_with_index(peer.header.index)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .unwrap();
            body().await;
        });
    })
    .join()
    .unwrap();
}

fn address(ip: &str, prefix: u8) -> types::IPAddress {
    let mut a = types::IPAddress::new();
    a.address = ip.into();
    a.mask = prefix.to_string();
    a
}

fn route(dest: &str, gateway: &str, device: &str, scope: u32) -> types::Route {
    let mut r = types::Route::new();
    r.dest = dest.into();
    r.gateway = gateway.into();
    r.device = device.into();
    r.scope = scope;
    r
}

async fn update_routes(
    client: &AgentClient,
    routes: Vec<types::Route>,
) -> ttrpc::Result<agent::Routes> {
    let mut req = agent::UpdateRoutesRequest::new();
    let mut list = agent::Routes::new();
    list.Routes = routes;
    req.routes = protobuf::MessageField::some(list);
    client.agent.update_routes(ctx(), &req).await
}

fn has_address(iface: &types::Interface, ip: &str, prefix: &str) -> bool {
    iface
        .IPAddresses
        .iter()
        .any(|a| a.address == ip && a.mask == prefix)
}

#[test]
fn interfaces_and_routes_are_configured_over_netlink() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        veil_tests::skip_or_fail("network namespaces and veth need root");
        return;
    }
    in_private_netns(|| async {
        let (_agent, client) = ready_agent(ALLOW_ALL).await;
        let listed = client
            .agent
            .list_interfaces(ctx(), &agent::ListInterfacesRequest::new())
            .await
            .unwrap();
        let veth = listed
            .Interfaces
            .iter()
            .find(|i| i.name == "veth-a")
            .expect("veth-a listed")
            .clone();
        assert_eq!(veth.type_, "veth");
        assert_eq!(veth.hwAddr.len(), 17, "{}", veth.hwAddr);

        // Found by MAC, renamed, MTU and addresses set, brought up.
        let mut iface = types::Interface::new();
        iface.name = "eth0".into();
        iface.hwAddr = veth.hwAddr.clone();
        iface.mtu = 1400;
        iface.IPAddresses.push(address("198.18.0.2", 24));
        let mut req = agent::UpdateInterfaceRequest::new();
        req.interface = protobuf::MessageField::some(iface.clone());
        let got = client.agent.update_interface(ctx(), &req).await.unwrap();
        assert_eq!((got.name.as_str(), got.mtu), ("eth0", 1400));
        assert!(has_address(&got, "198.18.0.2", "24"), "{got:?}");
        assert!(got.raw_flags & libc::IFF_UP as u32 != 0, "link is up");

        // A second update replaces the addresses.
        iface.IPAddresses = vec![address("198.18.0.3", 24)];
        req.interface = protobuf::MessageField::some(iface.clone());
        let got = client.agent.update_interface(ctx(), &req).await.unwrap();
        assert!(has_address(&got, "198.18.0.3", "24"), "{got:?}");
        assert!(
            !has_address(&got, "198.18.0.2", "24"),
            "old address kept: {got:?}"
        );

        // Routes: the subnet, a default route and one more via the gateway.
        let routes = update_routes(
            &client,
            vec![
                route("", "198.18.0.1", "eth0", 0),
                route("198.19.0.0/16", "198.18.0.1", "eth0", 0),
                {
                    // As CNI namespaces list it: the kernel's subnet route, with its source.
                    let mut subnet = route("198.18.0.0/24", "", "eth0", 253);
                    subnet.source = "198.18.0.3".into();
                    subnet
                },
            ],
        )
        .await
        .unwrap()
        .Routes;
        let find = |routes: &[types::Route], dest: &str| {
            routes
                .iter()
                .find(|r| r.dest == dest && r.device == "eth0")
                .cloned()
        };
        let default = find(&routes, "").expect("default route");
        assert_eq!(default.gateway, "198.18.0.1");
        assert_eq!(
            find(&routes, "198.19.0.0/16").unwrap().gateway,
            "198.18.0.1"
        );
        assert_eq!(find(&routes, "198.18.0.0/24").unwrap().scope, 253);

        // Updating again replaces them: the default route goes.
        update_routes(&client, vec![route("198.18.0.0/24", "", "eth0", 253)])
            .await
            .unwrap();
        let listed = client
            .agent
            .list_routes(ctx(), &agent::ListRoutesRequest::new())
            .await
            .unwrap()
            .Routes;
        assert!(find(&listed, "").is_none(), "{listed:?}");
        assert!(find(&listed, "198.18.0.0/24").is_some(), "{listed:?}");

        // Unknown links and bad input are refused with the input named.
        iface.hwAddr = "02:00:00:00:00:99".into();
        req.interface = protobuf::MessageField::some(iface.clone());
        let (code, msg) = status_of(client.agent.update_interface(ctx(), &req).await);
        assert_eq!(code, ttrpc::Code::NOT_FOUND);
        assert!(msg.contains("02:00:00:00:00:99"), "{msg}");
        let (code, msg) =
            status_of(update_routes(&client, vec![route("", "198.18.0.1", "eth9", 0)]).await);
        assert_eq!(code, ttrpc::Code::NOT_FOUND);
        assert!(msg.contains("eth9"), "{msg}");
        let (code, msg) =
            status_of(update_routes(&client, vec![route("198.18.0.0/99", "", "eth0", 0)]).await);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
        assert!(msg.contains("/99"), "{msg}");
        let (code, _) = status_of(
            client
                .agent
                .update_interface(ctx(), &agent::UpdateInterfaceRequest::new())
                .await,
        );
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    });
}

#[test]
fn network_requests_pass_the_policy() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        veil_tests::skip_or_fail("network namespaces and veth need root");
        return;
    }
    in_private_netns(|| async {
        let policy = ALLOW_ALL.replace("default UpdateInterfaceRequest := true\n", "");
        let (_agent, client) = ready_agent(&policy).await;
        let mut iface = types::Interface::new();
        iface.name = "veth-a".into();
        let mut req = agent::UpdateInterfaceRequest::new();
        req.interface = protobuf::MessageField::some(iface);
        let (code, msg) = status_of(client.agent.update_interface(ctx(), &req).await);
        assert_eq!(code, ttrpc::Code::PERMISSION_DENIED);
        assert!(msg.contains("UpdateInterfaceRequest"), "{msg}");
        // The rules are separate: listing is still allowed.
        client
            .agent
            .list_interfaces(ctx(), &agent::ListInterfacesRequest::new())
            .await
            .unwrap();
    });
}
