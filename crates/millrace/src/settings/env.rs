//! `MILLRACE_…` environment overrides: a variable's `__`-separated path set into the parsed TOML.

use crate::error::{Error, Result};

pub(super) const ENV_PREFIX: &str = "MILLRACE_";
pub(super) const TOP_LEVEL: [&str; 6] = [
    "redis",
    "service",
    "connection",
    "restart",
    "defaults",
    "consumers",
];

pub(super) fn toml_message(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `a__b__0__c` in the table to `value`, parsed as a TOML scalar when it looks like one.
pub(super) fn set_path(root: &mut toml::Table, path: &str, value: &str, name: &str) -> Result<()> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let parsed = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    };
    let bad = || {
        Error::config(
            None,
            name,
            "does not name a setting (use `__` between levels, e.g. MILLRACE_DEFAULTS__COUNT)",
        )
    };
    let mut table = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() {
            return Err(bad());
        }
        if last {
            table.insert(part.clone(), parsed);
            return Ok(());
        }
        let next = parts.get(i + 1).ok_or_else(bad)?;
        let entry = table.entry(part.clone()).or_insert_with(|| {
            if next.parse::<usize>().is_ok() {
                toml::Value::Array(Vec::new())
            } else {
                toml::Value::Table(toml::Table::new())
            }
        });
        table = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let index: usize = next.parse().map_err(|_| bad())?;
                let declared = items.len();
                let item = items.get_mut(index).ok_or_else(|| {
                    Error::config(
                        None,
                        name,
                        format!("index {index} is past the {declared} declared entries"),
                    )
                })?;
                // Skip the index part on the next round.
                return match item {
                    toml::Value::Table(t) => set_path(t, &parts[i + 2..].join("__"), value, name),
                    _ => Err(bad()),
                };
            }
            _ => return Err(bad()),
        };
    }
    Err(bad())
}
