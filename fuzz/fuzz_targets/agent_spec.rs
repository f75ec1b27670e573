//! The OCI spec the host sends with CreateContainer (and UpdateContainer's resources) as the
//! agent turns it into libcontainer's bundle: decoding, every field check, the runc JSON and
//! its parse into `oci_spec`. None may panic. (dm-verity root hashes are decoded by the `hex`
//! crate; `container::verity`'s unit tests cover bad ones.)
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use veil_agent::container::bundle::{config_json, resources_json, to_spec, BundlePaths};
use veil_agent::protocols::agent::{CreateContainerRequest, UpdateContainerRequest};

fuzz_target!(|data: &[u8]| {
    let paths = BundlePaths {
        rootfs: Path::new("/run/veil-agent/c/root/rootfs"),
        cgroups_path: "/veil/c",
        shared_dir: Path::new("/run/veil-agent/shared"),
        ephemeral_dir: Path::new("/run/veil-agent/ephemeral"),
    };
    if let Ok(req) = CreateContainerRequest::parse_from_bytes(data) {
        if let Some(spec) = req.OCI.as_ref() {
            if let Ok(json) = config_json(spec, &paths) {
                let _ = to_spec(json);
            }
        }
    }
    if let Ok(req) = UpdateContainerRequest::parse_from_bytes(data) {
        if let Some(resources) = req.resources.as_ref() {
            let _ = resources_json(resources);
        }
    }
});
