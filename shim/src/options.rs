//! containerd's runtime options: where the shim's config file is.
//!
//! CRI (`[...runtimes.veil.options] ConfigPath = ...`) and `ctr run --runtime-config-path`
//! send `runtimeoptions.v1.Options { type_url = 1; config_path = 2; config_body = 3 }`.
//! containerd-shim-protos does not carry that message, so its one field is read directly.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;

/// The options message's type name (the URL's last segment).
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";
/// Environment variable through which the `start` action passes the path to the shim server.
pub const CONFIG_PATH_ENV: &str = "VEIL_SHIM_CONFIG_PATH";

/// `ConfigPath` of runtime options, when they are `runtimeoptions.v1.Options` and set it.
pub fn config_path(options: &Any) -> Option<PathBuf> {
    let name = options.type_url.rsplit('/').next().unwrap_or_default();
    if name != RUNTIME_OPTIONS {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&options.value);
    let mut found = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire_type) = (tag >> 3, tag & 7);
        match (field, wire_type) {
            (2, 2) => found = input.read_string().ok(),
            (_, 2) => {
                if input.read_bytes().is_err() {
                    return None;
                }
            }
            (_, 0) => {
                if input.read_raw_varint64().is_err() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    found.filter(|p| !p.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    /// Field 1 "t", field 2 "/etc/veil.toml".
    fn encoded() -> Vec<u8> {
        let mut v = vec![0x0a, 1, b't', 0x12, 14];
        v.extend_from_slice(b"/etc/veil.toml");
        v
    }

    #[test]
    fn reads_config_path() {
        let any = options("runtimeoptions.v1.Options", encoded());
        assert_eq!(config_path(&any), Some(PathBuf::from("/etc/veil.toml")));
        let any = options("type.googleapis.com/runtimeoptions.v1.Options", encoded());
        assert_eq!(config_path(&any), Some(PathBuf::from("/etc/veil.toml")));
    }

    #[test]
    fn other_types_and_garbage_give_none() {
        assert_eq!(
            config_path(&options("containerd.runc.v1.Options", encoded())),
            None
        );
        assert_eq!(
            config_path(&options("runtimeoptions.v1.Options", vec![0x12, 200])),
            None
        );
    }
}
