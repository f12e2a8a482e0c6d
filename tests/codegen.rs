//! The client crate ships its generated code (a published crate cannot read
//! `proto/`). This test regenerates it with the same rules as the server's
//! `build.rs` and fails when the committed copy is stale.
//!
//! Refresh the committed copy with `AGENTRY_BLESS=1 cargo test --test codegen`.

include!("../proto/codegen.rs");

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the client crate keeps its generated code.
const COMMITTED: &str = "client/src/generated/agentry.v1.rs";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("agentry-codegen-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn client_generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds =
        compile_api(&root.join("proto")).unwrap_or_else(|e| panic!("cannot compile proto/: {e}"));
    let out = TempDir::new();
    generate_api(fds, &out.0, false).expect("generate client code");
    let generated =
        std::fs::read(out.0.join("agentry.v1.rs")).expect("read generated agentry.v1.rs");

    let committed_path = root.join(COMMITTED);
    if std::env::var_os("AGENTRY_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(committed_path.parent().expect("has a parent"))
            .expect("create generated/");
        std::fs::write(&committed_path, &generated)
            .unwrap_or_else(|e| panic!("write {COMMITTED}: {e}"));
        return;
    }
    let committed = std::fs::read(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "{COMMITTED} is out of date with proto/: run `AGENTRY_BLESS=1 cargo test --test codegen` and commit the result"
    );
}
