//! Generates the tonic/prost code for `proto/raft_service.proto` with a vendored protoc,
//! so building pontoon never depends on a protoc installed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of set_var: build scripts are single-threaded at this point.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/raft_service.proto");
    tonic_prost_build::compile_protos("proto/raft_service.proto")?;
    Ok(())
}
