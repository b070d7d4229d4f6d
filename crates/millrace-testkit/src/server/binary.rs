//! The programs the kit runs, found once: `redis-server` (`$MILLRACE_REDIS_SERVER`, a fetched
//! server of the matrix, `PATH`, the usual places) and executables on `PATH`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::REDIS_SERVER_ENV;
use crate::TestkitError;

/// The absolute path of the `redis-server` to run: `$MILLRACE_REDIS_SERVER`,
/// else the first `redis-server` on `PATH` (then the usual install
/// locations). Absolute because `DEBUG RESTART` re-executes `argv[0]`.
pub(crate) fn redis_server_binary() -> Result<PathBuf, TestkitError> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_redis_server)
        .clone()
        .map_err(|detail| TestkitError::RedisServerNotFound { detail })
}

fn find_redis_server() -> Result<PathBuf, String> {
    if let Some(value) = std::env::var_os(REDIS_SERVER_ENV) {
        let path = PathBuf::from(&value);
        let resolved = if path.components().count() == 1 {
            search_path(&value)
        } else {
            Some(path.clone())
        };
        return match resolved.filter(|p| is_executable(p)) {
            Some(p) => absolute(&p),
            None => Err(format!(
                "{REDIS_SERVER_ENV}={} is not an executable file",
                path.display()
            )),
        };
    }
    let kind = crate::ServerKind::current();
    if let Some(fetched) = crate::matrix::fetched_binary(kind)? {
        return Ok(fetched);
    }
    let candidate = search_path(std::ffi::OsStr::new("redis-server")).or_else(|| {
        ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
    });
    match candidate {
        Some(p) => absolute(&p),
        None => Err(format!(
            "no `redis-server` on PATH ({}) nor in /usr/bin or /usr/local/bin, and {REDIS_SERVER_ENV} is not set",
            std::env::var("PATH").unwrap_or_default()
        )),
    }
}

/// Makes `p` absolute *without* resolving symlinks: Debian's
/// `/usr/bin/redis-server` is a symlink to `redis-check-rdb`, and the binary
/// picks its personality from `argv[0]`.
fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

pub(crate) fn search_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
