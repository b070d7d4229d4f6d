//! Shared helpers for the end-to-end tests (most live in `e2e/` and `cluster/`); here, what both
//! test binaries need: the example programs they run as worker processes, and captured logs.

use std::path::{Path, PathBuf};
use std::process::Command;

mod logs;

pub use logs::{assert_one_outage, tenant_streams, Logs};

/// The example program `name` (from the `millrace-examples` package) next to the calling test
/// binary, built or brought up to date first, so a test never runs a stale build of it (cargo
/// only rebuilds what changed: when it is current this is a quick check). Call it once per test
/// binary (behind a `OnceLock`).
///
/// ```no_run
/// let orders = millrace_tests::example_bin("orders");
/// assert!(orders.exists());
/// ```
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // …/target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "millrace-examples",
            "--example",
            name,
        ])
        .arg("--profile")
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| panic!("running `{cargo} build` for the {name} example failed: {e}"));
    assert!(
        status.success() && bin.exists(),
        "`{cargo} build -p millrace-examples --example {name}` failed ({status}) or did not produce {}; \
         build it with `cargo build --workspace --examples`",
        bin.display()
    );
    bin
}
