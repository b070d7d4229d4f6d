//! Throwaway TLS material made with the `openssl` command-line tool.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestkitError;

/// The files a TLS-enabled server is started with.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// The self-signed CA that signed the server certificate (PEM).
    pub(crate) ca_cert: PathBuf,
    /// The server certificate (PEM), SAN `IP:127.0.0.1, DNS:localhost`.
    pub(crate) cert: PathBuf,
    /// The server's private key (PEM).
    pub(crate) key: PathBuf,
}

const SERVER_EXT: &str = "basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
";

/// Makes rustls's ring provider the process default, unless one is set:
/// redis-rs's TLS connections need one.
pub(crate) fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `redis::Client` for `url` that trusts the CA in `ca_cert` (PEM).
pub(crate) fn client(url: &str, ca_cert: &Path) -> Result<redis::Client, String> {
    install_crypto_provider();
    let ca = std::fs::read(ca_cert).map_err(|e| format!("reading {}: {e}", ca_cert.display()))?;
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        },
    )
    .map_err(|e| format!("a TLS client for {url}: {e}"))
}

/// Writes a fresh CA and a server certificate signed by it into `dir`.
pub(crate) fn generate(dir: &Path) -> Result<TlsFiles, TestkitError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TestkitError::io(format!("creating {}", dir.display()), e))?;
    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    let ext = dir.join("server.ext");
    std::fs::write(&ext, SERVER_EXT)
        .map_err(|e| TestkitError::io(format!("writing {}", ext.display()), e))?;

    // P-256 keys: generating them is instant, unlike RSA.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-sha256",
            "-subj",
            "/CN=millrace-testkit CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            "server.ext",
        ],
    )?;
    Ok(files)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), TestkitError> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                TestkitError::ToolNotFound {
                    tool: "openssl",
                    install: "apt-get install -y openssl",
                    source,
                }
            } else {
                TestkitError::io("running openssl", source)
            }
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TestkitError::Tls {
            dir: dir.to_path_buf(),
            step: format!("openssl {}", args.join(" ")),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            ),
        })
    }
}
