//! The README's app: the README shows exactly `examples/readme.rs`, and that program, given a wrong
//! password, says so and exits non-zero at once instead of running silently.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use millrace_testkit::RedisServer;

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The example's code without its header (the `//!` lines saying how to run it and its lint allows).
fn example_body() -> String {
    let src = repo_file("examples/readme.rs");
    let at = src
        .find("use std::process::ExitCode;")
        .expect("examples/readme.rs starts its code with `use std::process::ExitCode;`");
    src[at..].to_owned()
}

/// The README's first `rust` block.
fn readme_block() -> String {
    let readme = repo_file("README.md");
    let start = readme.find("```rust").expect("README.md has a rust block");
    let body = &readme[start..];
    let body = &body[body.find('\n').expect("a line after the fence") + 1..];
    let end = body.find("\n```").expect("the rust block ends");
    format!("{}\n", &body[..end])
}

#[test]
fn the_readme_shows_the_readme_example_verbatim() {
    let (readme, example) = (readme_block(), example_body());
    if readme != example {
        let line = readme
            .lines()
            .zip(example.lines())
            .position(|(a, b)| a != b)
            .map_or("the length".to_owned(), |n| format!("line {}", n + 1));
        panic!(
            "README.md's first rust block differs from examples/readme.rs (after its header) at \
             {line}: copy the example's code into the README\n--- README:\n{readme}\n--- example:\n{example}"
        );
    }
}

/// The README's example binary, brought up to date first.
fn readme_bin() -> PathBuf {
    millrace_tests::example_bin("readme")
}

#[tokio::test]
async fn the_readme_app_with_a_wrong_password_exits_non_zero_saying_authentication_failed() {
    let server = RedisServer::builder().password("the-right-one").start();
    let url = format!("redis://:the-wrong-one@127.0.0.1:{}", server.port());
    let bin = readme_bin();
    let started = Instant::now();
    let child = tokio::process::Command::new(bin)
        .env("REDIS_URL", &url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the README app still runs 10 s after a wrong password")
        .unwrap();
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "exit status {:?}: {text}",
        out.status
    );
    assert!(
        text.to_lowercase().contains("authentication failed"),
        "the message says authentication failed: {text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.port())),
        "the message names the server: {text}"
    );
    assert!(
        !text.contains("the-wrong-one"),
        "the password is not shown: {text}"
    );
    assert!(
        took < Duration::from_secs(2),
        "exited after {took:?}: {text}"
    );
}
