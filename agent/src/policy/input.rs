//! Turns a request message into the JSON document a rule sees as `input`.

use protobuf::MessageFull;

use super::PolicyError;

/// JSON for `msg` with the proto field names (`container_id`, `OCI`, `Process`, ...), as Kata's
/// policies address them, and every field present even when it holds its default value, so rules
/// can compare against empty values rather than meet undefined ones.
pub fn request_to_input_json<M: MessageFull>(msg: &M) -> Result<String, PolicyError> {
    let options = protobuf_json_mapping::PrintOptions {
        proto_field_name: true,
        always_output_default_values: true,
        ..Default::default()
    };
    protobuf_json_mapping::print_to_string_with_options(msg, &options)
        .map_err(|e| PolicyError::Input(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::{agent, oci};

    #[test]
    fn fields_keep_their_proto_names() {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c1".into();
        let mut process = oci::Process::new();
        process.Args = vec!["/bin/sh".into()];
        let mut spec = oci::Spec::new();
        spec.Process = protobuf::MessageField::some(process);
        req.OCI = protobuf::MessageField::some(spec);
        let json: serde_json::Value =
            serde_json::from_str(&request_to_input_json(&req).unwrap()).unwrap();
        assert_eq!(json["container_id"], "c1");
        assert_eq!(json["OCI"]["Process"]["Args"][0], "/bin/sh");
        assert_eq!(json["exec_id"], "");
    }
}
