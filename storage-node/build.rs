//! Compiles the etcd v3 API and Mend's peer protocol with protox: no system `protoc` needed.
//! etcd's messages also get proto3 JSON (pbjson) for the gRPC-gateway API, in the shape etcd's
//! gateway writes: original field names, defaults left out, unknown fields ignored.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/etcdserverpb/rpc.proto", "proto/mendpeer/peer.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    for dep in ["proto/mvccpb/kv.proto", "proto/authpb/auth.proto"] {
        println!("cargo:rerun-if-changed={dep}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let encoded = descriptors.encode_to_vec();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".etcdserverpb", ".mvccpb", ".authpb"])?;
    Ok(())
}
