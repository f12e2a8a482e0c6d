//! Compiles `proto/` into server stubs and the descriptor set served by reflection.

use prost::Message as _;

include!("proto/codegen.rs");

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let fds = compile_api(&root).unwrap_or_else(|e| panic!("cannot compile proto/: {e}"));
    std::fs::write(out_dir.join("agentry_descriptor.bin"), fds.encode_to_vec())
        .expect("write descriptor set");
    generate_api(fds, &out_dir, true).expect("generate server code");
}
