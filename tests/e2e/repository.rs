//! The repository stands alone: no tracked file points at notes that are not in it, and every test
//! that docs/redis-behaviour.md cites exists.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every tracked file's path and text (files that are not UTF-8 are skipped).
fn tracked_texts() -> Vec<(String, String)> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root())
        .output()
        .expect("running `git ls-files` (this check needs a git checkout)");
    assert!(out.status.success(), "git ls-files: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let text = std::fs::read_to_string(root().join(p)).ok()?;
            Some((p.to_owned(), text))
        })
        .collect()
}

#[test]
fn no_tracked_file_points_outside_the_repository_or_at_seed_documents() {
    // Spelled in pieces so that this file does not match itself.
    let forbidden = [
        ["REDIS-", "FACTS"].concat(),
        ["../", "shared/"].concat(),
        ["seed ", "guide"].concat(),
        ["seed ", "tutorial"].concat(),
        ["seed ", "document"].concat(),
    ];
    let mut found = Vec::new();
    for (path, text) in tracked_texts() {
        let lower = text.to_lowercase();
        for word in &forbidden {
            if let Some(at) = lower.find(&word.to_lowercase()) {
                let line = text[..at].lines().count().max(1);
                found.push(format!("{path}:{line}: `{word}`"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "these files refer to documents that are not in the repository; say what is meant in \
         this repository's own words (docs/redis-behaviour.md for verified behaviour):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_test_the_redis_behaviour_page_cites_exists() {
    let page = std::fs::read_to_string(root().join("docs/redis-behaviour.md")).unwrap();
    let mut cited = 0;
    let mut missing = Vec::new();
    for quoted in page.split('`').skip(1).step_by(2) {
        let Some((file, test)) = quoted.split_once("::") else {
            continue;
        };
        if !file.ends_with(".rs") {
            continue;
        }
        cited += 1;
        let text = std::fs::read_to_string(root().join(file)).unwrap_or_default();
        if !text.contains(&format!("fn {test}(")) {
            missing.push(format!("{file}::{test}"));
        }
    }
    assert!(cited >= 13, "the page cites {cited} tests");
    assert!(
        missing.is_empty(),
        "docs/redis-behaviour.md cites tests that do not exist (renamed or moved?): {missing:?}"
    );
}

/// Where a source file named in the docs may live: from the root, or inside a crate or its `src`.
fn source_exists(named: &str) -> bool {
    let root = root();
    if root.join(named).is_file() {
        return true;
    }
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else {
        return false;
    };
    crates.filter_map(|c| c.ok()).any(|c| {
        let dir = c.path();
        dir.join(named).is_file() || dir.join("src").join(named).is_file()
    })
}

#[test]
fn every_source_file_the_docs_name_exists() {
    let mut missing = Vec::new();
    for (path, text) in tracked_texts() {
        if !path.ends_with(".md") {
            continue;
        }
        for quoted in text.split('`').skip(1).step_by(2) {
            let named = quoted.split("::").next().unwrap_or_default();
            let looks_like_a_path = named.ends_with(".rs")
                && !named.contains(' ')
                && named
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
            if looks_like_a_path && !source_exists(named) {
                missing.push(format!("{path}: `{named}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the docs name source files that do not exist (moved or renamed?):\n{}",
        missing.join("\n")
    );
}

/// The text of a Markdown file without its fenced code blocks.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for (path, text) in tracked_texts() {
        if !path.ends_with(".md") {
            continue;
        }
        let dir = root().join(&path);
        let dir = dir.parent().expect("a file has a folder");
        for piece in prose(&text).split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            let file = target.split('#').next().unwrap_or_default();
            if file.is_empty() || file.contains("://") || file.starts_with("mailto:") {
                continue;
            }
            if !dir.join(file).exists() {
                broken.push(format!("{path}: ({target})"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to files that do not exist:\n{}",
        broken.join("\n")
    );
}
