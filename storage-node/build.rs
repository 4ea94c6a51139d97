//! Compiles the etcd v3 API and Mend's peer protocol with protox: no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/etcdserverpb/rpc.proto", "proto/mendpeer/peer.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    for dep in ["proto/mvccpb/kv.proto", "proto/authpb/auth.proto"] {
        println!("cargo:rerun-if-changed={dep}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
