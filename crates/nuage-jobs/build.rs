//! Generates the gRPC code from proto/*.proto with a vendored protoc, so building nuage
//! needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the env.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/jobs.proto", "proto/demo_auth.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
