//! Tells the crate whether it is built inside the millrace repository, where the README and the
//! guide (`docs/`) sit two levels up. Their Rust examples are compiled as doctests there; a
//! packaged crate has no such files and skips them.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(millrace_repository)");
    println!("cargo::rerun-if-changed=build.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if root.join("README.md").is_file() && root.join("docs/SUMMARY.md").is_file() {
        println!("cargo::rustc-cfg=millrace_repository");
    }
}
