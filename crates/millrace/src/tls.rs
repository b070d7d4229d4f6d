//! TLS for the consumers' own read connections (`rediss://`, the `tls` feature), through
//! `tokio-rustls`: the same trust rules as redis-rs's `rediss://` handling in this build (the
//! Mozilla roots, or the given root certificates instead; a client certificate when given;
//! `#insecure` refused, as redis-rs refuses it without its `tls-rustls-insecure` feature).
//!
//! A `redis::Client` built with `Client::build_with_tls` does not give its certificates back, so
//! millrace takes them itself ([`ConnectionOptions::tls_certificates`](crate::ConnectionOptions::tls_certificates))
//! and gives them to the control connection's client too.

use std::fmt;
use std::io;
use std::sync::Arc;

use redis::{ClientTlsConfig, ConnectionAddr, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The PEM certificates given to millrace: compared by content, never printed.
#[derive(Clone)]
pub(crate) struct Certificates(pub(crate) TlsCertificates);

/// A client certificate chain and its key, as PEM.
type ClientPem<'a> = (&'a [u8], &'a [u8]);

impl Certificates {
    fn parts(&self) -> (Option<&[u8]>, Option<ClientPem<'_>>) {
        let c = &self.0;
        (
            c.root_cert.as_deref(),
            c.client_tls
                .as_ref()
                .map(|t| (t.client_cert.as_slice(), t.client_key.as_slice())),
        )
    }
}

impl PartialEq for Certificates {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Certificates {}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (root, client) = self.parts();
        f.debug_struct("TlsCertificates")
            .field("root_cert", &root.map(|_| "<given>"))
            .field("client_tls", &client.map(|_| "<redacted>"))
            .finish()
    }
}

/// How a reader connects over TLS: one rustls configuration, built once per supervisor, and the
/// name the server's certificate must carry.
pub(crate) struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Tls {
    /// The TLS set-up for `addr`: `None` for a plain address. Fails, with the reason, when the
    /// certificates do not parse, when `addr` carries certificates millrace was not given, or
    /// for `#insecure`.
    pub(crate) fn for_addr(
        addr: &ConnectionAddr,
        certificates: Option<&Certificates>,
    ) -> Result<Option<Tls>, String> {
        let ConnectionAddr::TcpTls {
            host,
            insecure,
            tls_params,
            ..
        } = addr
        else {
            return match certificates {
                Some(_) => Err("are set, but the server address is not `rediss://`".into()),
                None => Ok(None),
            };
        };
        if *insecure {
            return Err(
                "cannot be skipped: `rediss://…#insecure` (no certificate check) is not supported"
                    .into(),
            );
        }
        if tls_params.is_some() && certificates.is_none() {
            return Err(
                "are in the redis::Client but were not given to millrace, which cannot \
                 read them back from it: pass the same ones to \
                 `ConnectionOptions::tls_certificates`"
                    .into(),
            );
        }
        let config = client_config(certificates.map(|c| &c.0))?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| format!("cannot be checked against the host name `{host}`: {e}"))?;
        Ok(Some(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        }))
    }

    /// The TLS handshake over a connected TCP stream.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

/// The rustls configuration: the given root certificates or else the Mozilla roots, and the
/// client certificate when given.
fn client_config(certificates: Option<&TlsCertificates>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match certificates.and_then(|c| c.root_cert.as_deref()) {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| format!("has a root certificate that is not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("has a root certificate rustls refuses: {e}"))?;
            }
            if roots.is_empty() {
                return Err("has an empty root certificate list".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot be used: {e}"))?
            .with_root_certificates(roots);
    match certificates.and_then(|c| c.client_tls.as_ref()) {
        Some(ClientTlsConfig {
            client_cert,
            client_key,
        }) => {
            let chain = CertificateDer::pem_slice_iter(client_cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("has a client certificate that is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(client_key)
                .map_err(|e| format!("has a client key that is not PEM: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("has a client certificate rustls refuses: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(url: &str) -> ConnectionAddr {
        redis::Client::open(url)
            .expect("a URL")
            .get_connection_info()
            .addr()
            .clone()
    }

    fn certificates(root: &[u8]) -> Certificates {
        Certificates(TlsCertificates {
            client_tls: None,
            root_cert: Some(root.to_vec()),
        })
    }

    #[test]
    fn a_plain_address_needs_no_tls_and_refuses_certificates() {
        assert!(matches!(
            Tls::for_addr(&addr("redis://127.0.0.1:6379"), None),
            Ok(None)
        ));
        let err = Tls::for_addr(&addr("redis://127.0.0.1:6379"), Some(&certificates(b"x")))
            .expect_err("certificates for a plain address");
        assert!(err.contains("not `rediss://`"), "{err}");
    }

    #[test]
    fn insecure_and_unreadable_certificates_are_refused() {
        let err =
            Tls::for_addr(&addr("rediss://127.0.0.1:6380/#insecure"), None).expect_err("#insecure");
        assert!(err.contains("#insecure"), "{err}");
        let err = Tls::for_addr(&addr("rediss://127.0.0.1:6380"), Some(&certificates(b"")))
            .expect_err("no root certificate");
        assert!(err.contains("root certificate"), "{err}");
        // The Mozilla roots when none are given.
        assert!(matches!(
            Tls::for_addr(&addr("rediss://localhost:6380"), None),
            Ok(Some(_))
        ));
    }

    #[test]
    fn certificates_compare_by_content_and_never_print() {
        let a = certificates(b"-----BEGIN CERTIFICATE-----secret");
        assert_eq!(a, certificates(b"-----BEGIN CERTIFICATE-----secret"));
        assert_ne!(a, certificates(b"other"));
        assert!(!format!("{a:?}").contains("secret"));
    }
}
