//! Tells the crate whether it is built inside the millrace repository, where the README and the
//! guide (`docs/`) sit two levels up. Their Rust examples are compiled as doctests there; a
//! packaged crate has no such files and skips them.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(millrace_repository)");
    println!("cargo::rerun-if-changed=build.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The repository's own layout, not any folder that happens to hold a README two levels up.
    let in_repository = root.join("crates/millrace/build.rs").is_file()
        && root.join("README.md").is_file()
        && root.join("docs/SUMMARY.md").is_file();
    if in_repository {
        println!("cargo::rustc-cfg=millrace_repository");
    }
}
