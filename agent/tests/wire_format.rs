//! The generated messages put fields at Kata's field numbers (the wire format is what matters for
//! compatibility, so check encoded tags against the numbers in Kata's agent.proto/oci.proto).

use protobuf::Message;
use veil_agent::protocols::{agent, oci};

#[test]
fn create_container_request_uses_kata_field_numbers() {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c".into();
    let mut spec = oci::Spec::new();
    spec.Hostname = "h".into();
    req.OCI = protobuf::MessageField::some(spec);
    let bytes = req.write_to_bytes().unwrap();
    // field 1 (container_id), wire type 2 -> tag 0x0a; field 6 (OCI), wire type 2 -> tag 0x32;
    // inside Spec, field 4 (Hostname) -> tag 0x22.
    assert_eq!(bytes, vec![0x0a, 1, b'c', 0x32, 3, 0x22, 1, b'h']);
}

#[test]
fn read_stream_request_len_is_field_three() {
    let mut req = agent::ReadStreamRequest::new();
    req.len = 5;
    assert_eq!(req.write_to_bytes().unwrap(), vec![0x18, 5]);
}

#[test]
fn set_policy_request_policy_is_field_one() {
    let mut req = agent::SetPolicyRequest::new();
    req.policy = "p".into();
    assert_eq!(req.write_to_bytes().unwrap(), vec![0x0a, 1, b'p']);
}

#[test]
fn unknown_kata_fields_are_skipped_not_rejected() {
    // Storage field 7 (fs_group, not in our subset) followed by field 3 (source).
    let bytes = [0x3a, 0x02, 0x10, 0x01, 0x1a, 0x01, b'x'];
    let storage = agent::Storage::parse_from_bytes(&bytes).unwrap();
    assert_eq!(storage.source, "x");
}

#[test]
fn network_requests_use_kata_field_numbers() {
    use veil_agent::protocols::types;

    let mut addr = types::IPAddress::new();
    addr.family = types::IPFamily::v6.into();
    addr.address = "a".into();
    addr.mask = "8".into();
    let mut iface = types::Interface::new();
    iface.device = "d".into();
    iface.name = "n".into();
    iface.IPAddresses.push(addr);
    iface.mtu = 9;
    iface.hwAddr = "h".into();
    let mut req = agent::UpdateInterfaceRequest::new();
    req.interface = protobuf::MessageField::some(iface);
    // UpdateInterfaceRequest.interface = 1; Interface: device 1, name 2, IPAddresses 3, mtu 4
    // (varint), hwAddr 5; IPAddress: family 1 (varint), address 2, mask 3.
    assert_eq!(
        req.write_to_bytes().unwrap(),
        vec![
            0x0a, 21, 0x0a, 1, b'd', 0x12, 1, b'n', 0x1a, 8, 0x08, 1, 0x12, 1, b'a', 0x1a, 1, b'8',
            0x20, 9, 0x2a, 1, b'h'
        ]
    );

    let mut route = types::Route::new();
    route.dest = "d".into();
    route.gateway = "g".into();
    route.device = "e".into();
    route.source = "s".into();
    route.scope = 253;
    route.family = types::IPFamily::v6.into();
    route.flags = 4;
    let mut routes = agent::Routes::new();
    routes.Routes.push(route);
    let mut req = agent::UpdateRoutesRequest::new();
    req.routes = protobuf::MessageField::some(routes);
    // UpdateRoutesRequest.routes = 1; Routes.Routes = 1; Route: dest 1, gateway 2, device 3,
    // source 4, scope 5, family 6, flags 7.
    assert_eq!(
        req.write_to_bytes().unwrap(),
        vec![
            0x0a, 21, 0x0a, 19, 0x0a, 1, b'd', 0x12, 1, b'g', 0x1a, 1, b'e', 0x22, 1, b's', 0x28,
            0xfd, 0x01, 0x30, 1, 0x38, 4
        ]
    );

    let mut list = agent::Interfaces::new();
    list.Interfaces.push(types::Interface::new());
    assert_eq!(list.write_to_bytes().unwrap(), vec![0x0a, 0]);

    let mut sandbox = agent::CreateSandboxRequest::new();
    sandbox.dns.push("x".into());
    assert_eq!(sandbox.write_to_bytes().unwrap(), vec![0x12, 1, b'x']);
}

#[test]
fn update_container_and_seccomp_use_kata_field_numbers() {
    let mut pids = oci::LinuxPids::new();
    pids.Limit = 3;
    let mut resources = oci::LinuxResources::new();
    resources.Pids = protobuf::MessageField::some(pids);
    let mut req = agent::UpdateContainerRequest::new();
    req.container_id = "c".into();
    req.resources = protobuf::MessageField::some(resources);
    // container_id field 1; resources field 2 (0x12) holding Pids field 4 (0x22) Limit 1 (0x08).
    assert_eq!(
        req.write_to_bytes().unwrap(),
        vec![0x0a, 1, b'c', 0x12, 4, 0x22, 2, 0x08, 3]
    );
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = "c".into();
    assert_eq!(pause.write_to_bytes().unwrap(), vec![0x0a, 1, b'c']);

    // Linux.Seccomp is field 8 (0x42); LinuxSeccomp.DefaultAction field 1.
    let mut seccomp = oci::LinuxSeccomp::new();
    seccomp.DefaultAction = "A".into();
    let mut linux = oci::Linux::new();
    linux.Seccomp = protobuf::MessageField::some(seccomp);
    assert_eq!(
        linux.write_to_bytes().unwrap(),
        vec![0x42, 3, 0x0a, 1, b'A']
    );
}
