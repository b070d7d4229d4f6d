//! `MILLRACE_…` environment overrides: a variable's `__`-separated path set into the parsed TOML.

use crate::error::{Error, Result};

const ENV_PREFIX: &str = "MILLRACE_";
const TOP_LEVEL: [&str; 8] = [
    "redis",
    "sentinel",
    "service",
    "connection",
    "restart",
    "defaults",
    "consumers",
    "multi_streams",
];

/// A variable's path as it sorts: indexes by number, names by text.
type PathOrder = Vec<(u8, u64, String)>;

/// Applies the `MILLRACE_…` variables among `env` to `root`, in the order of their paths (indexes
/// by number), so that `…__0__…` declares the first entry before `…__1__…` the second.
pub(super) fn apply(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<()> {
    let mut ours: Vec<(PathOrder, String, String)> = env
        .into_iter()
        .filter_map(|(name, value)| {
            let path = name.strip_prefix(ENV_PREFIX)?;
            // Only the file's own sections: other tools' MILLRACE_* variables are not ours.
            let top = path.split("__").next()?.to_ascii_lowercase();
            if !TOP_LEVEL.contains(&top.as_str()) {
                return None;
            }
            let order = path
                .split("__")
                .map(|part| match part.parse::<u64>() {
                    Ok(n) => (0, n, String::new()),
                    Err(_) => (1, 0, part.to_ascii_lowercase()),
                })
                .collect();
            Some((order, name, value))
        })
        .collect();
    ours.sort();
    for (_, name, value) in ours {
        let path = &name[ENV_PREFIX.len()..];
        set_path(root, path, &value, &name)?;
    }
    Ok(())
}

pub(super) fn toml_message(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `a__b__0__c` in the table to `value`, parsed as a TOML scalar when it looks like one.
fn set_path(root: &mut toml::Table, path: &str, value: &str, name: &str) -> Result<()> {
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
                // The next index declares a new entry (from the environment alone).
                if index == declared {
                    items.push(toml::Value::Table(toml::Table::new()));
                }
                let item = items.get_mut(index).ok_or_else(|| {
                    Error::config(
                        None,
                        name,
                        format!(
                            "index {index} is past the {declared} declared entries: declare entries in order, from index {declared}"
                        ),
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
