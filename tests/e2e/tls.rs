//! TLS (`rediss://`, the `tls` feature) against Debian's redis-server with a certificate made in the
//! test: it works with the right CA and fails closed with a wrong one.

use std::time::Duration;

use millrace::{ConnectionOptions, ConsumerId, ConsumerSpec, Error, StartId, Supervisor};
use millrace_testkit::{eventually, RedisServer};
use redis::TlsCertificates;

use crate::common::*;

fn ca_of(server: &RedisServer) -> TlsCertificates {
    let root_cert = std::fs::read(server.ca_cert_path().expect("a TLS server")).unwrap();
    TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }
}

fn tls_client(server: &RedisServer, ca_of_server: &RedisServer) -> redis::Client {
    redis::Client::build_with_tls(server.url(), ca_of(ca_of_server)).unwrap()
}

/// A supervisor for `server` that trusts the CA of `trusted`.
fn tls_builder(server: &RedisServer, trusted: &RedisServer) -> millrace::SupervisorBuilder {
    Supervisor::builder()
        .redis(server.url())
        .connection_options(ConnectionOptions::default().tls_certificates(ca_of(trusted)))
}

fn spec() -> ConsumerSpec {
    ConsumerSpec::new("s", "g", "c")
        .start_id(StartId::Beginning)
        .block(Duration::from_millis(300))
}

#[tokio::test]
async fn consumes_over_tls_with_the_right_ca() {
    if millrace_testkit::skip_without_tls() {
        return;
    }
    init_tracing();
    let server = RedisServer::builder().tls().start();
    assert!(server.url().starts_with("rediss://"));
    let client = tls_client(&server, &server);
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    xadd_n(&mut con, "s", 20).await;
    let seen = Seen::default();
    let app = tls_builder(&server, &server)
        .consumer(spec().handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "20 handled over TLS", || {
        let n = seen.len();
        async move { n >= 20 }
    })
    .await;
    eventually(WAIT, "nothing pending", || {
        let mut con = con.clone();
        async move { pending(&mut con, "s", "g").await == 0 }
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_ca_fails_closed() {
    if millrace_testkit::skip_without_tls() {
        return;
    }
    init_tracing();
    let server = RedisServer::builder().tls().start();
    let other = RedisServer::builder().tls().start();
    let seen = Seen::default();
    let app = tls_builder(&server, &other)
        .wait_for_redis(true) // past start(), into the consumer's own error path
        .consumer(spec().handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    let id = ConsumerId::new("s", "g", "c");
    eventually(WAIT, "the certificate is refused", || {
        let err = app
            .consumer_health(&id)
            .and_then(|h| h.last_error)
            .unwrap_or_default()
            .to_lowercase();
        async move { err.contains("certificate") || err.contains("unknownissuer") }
    })
    .await;
    let h = app.consumer_health(&id).unwrap();
    assert!(!h.is_running() && h.last_read.is_none(), "{h:?}");
    assert_eq!(seen.len(), 0);
    app.shutdown().await.unwrap();
}

/// After a handler panic the TLS reader's socket closes at once, as a plain one does, so the next
/// entry reaches the restarted consumer's new reader.
#[tokio::test]
async fn after_a_restart_over_tls_new_entries_reach_the_new_reader() {
    if millrace_testkit::skip_without_tls() {
        return;
    }
    init_tracing();
    let server = RedisServer::builder().tls().start();
    let client = tls_client(&server, &server);
    let con = client.get_multiplexed_async_connection().await.unwrap();
    let builder = Supervisor::builder()
        .redis_client(client)
        .connection_options(ConnectionOptions::default().tls_certificates(ca_of(&server)));
    new_entries_reach_the_restarted_consumer(builder, con).await;
}

/// A client built with certificates millrace was not given would leave the readers without
/// them: refused at start, with what to do.
#[tokio::test]
async fn a_client_with_certificates_millrace_was_not_given_is_refused_at_start() {
    if millrace_testkit::skip_without_tls() {
        return;
    }
    init_tracing();
    let server = RedisServer::builder().tls().start();
    let err = Supervisor::builder()
        .redis_client(tls_client(&server, &server))
        .consumer(spec().handler(recording(&Seen::default())))
        .start()
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.is_fatal());
    assert!(
        err.to_string()
            .contains("ConnectionOptions::tls_certificates"),
        "{err}"
    );
}

/// A client key and certificate signed by the CA of `server`, made with the `openssl` CLI as the
/// testkit makes the server's.
fn client_certificate(server: &RedisServer) -> redis::ClientTlsConfig {
    let tls = server.dir().join("tls");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    std::fs::write(
        tls.join("client.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=millrace-test-client",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.crt",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "client.ext",
    ]);
    redis::ClientTlsConfig {
        client_cert: std::fs::read(tls.join("client.crt")).unwrap(),
        client_key: std::fs::read(tls.join("client.key")).unwrap(),
    }
}

/// A server that asks for client certificates: the one given to millrace is presented on the
/// control connection and on the consumer's own read connection.
#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_on_every_connection() {
    if millrace_testkit::skip_without_tls() {
        return;
    }
    init_tracing();
    let server = RedisServer::builder()
        .tls()
        .arg("--tls-auth-clients")
        .arg("yes")
        .start();
    let mut certificates = ca_of(&server);
    certificates.client_tls = Some(client_certificate(&server));

    let without = Supervisor::builder()
        .redis(server.url())
        .connection_options(ConnectionOptions::default().tls_certificates(ca_of(&server)))
        .consumer(spec().handler(recording(&Seen::default())))
        .start()
        .await;
    assert!(without.is_err(), "connected without a client certificate");

    let client = redis::Client::build_with_tls(server.url(), certificates.clone()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    xadd_n(&mut con, "s", 20).await;
    let seen = Seen::default();
    let app = Supervisor::builder()
        .redis(server.url())
        .connection_options(ConnectionOptions::default().tls_certificates(certificates))
        .consumer(spec().handler(recording(&seen)))
        .start()
        .await
        .unwrap();
    eventually(WAIT, "20 handled over mutual TLS", || {
        let n = seen.len();
        async move { n >= 20 }
    })
    .await;
    app.shutdown().await.unwrap();
}

/// The three TLS mismatches fail `start()` with what is wrong and the setting that fixes it, not
/// "could not reach … check that redis-server runs at that address".
#[tokio::test]
async fn tls_mismatches_at_start_name_the_scheme_or_certificate_setting_that_fixes_them() {
    if millrace_testkit::skip_without_tls() {
        return;
    }
    init_tracing();
    let tls = RedisServer::builder().tls().start();
    let other = RedisServer::builder().tls().start();
    let plain = RedisServer::start();
    let start = |builder: millrace::SupervisorBuilder| async move {
        builder
            .consumer(spec().handler(recording(&Seen::default())))
            .start()
            .await
            .unwrap_err()
    };

    // A CA that did not sign the server's certificate: advice about the CA.
    let err = start(tls_builder(&tls, &other)).await;
    let text = err.to_string();
    assert!(text.contains("certificate was refused"), "{text}");
    assert!(text.contains("tls_ca_cert"), "{text}");
    assert!(!text.contains("could not reach"), "{text}");
    assert!(err.is_fatal(), "{err:?}");

    // rediss:// at a plain-text port.
    let url = format!("rediss://127.0.0.1:{}", plain.port());
    let text = start(Supervisor::builder().redis(url)).await.to_string();
    assert!(text.contains("does not speak TLS"), "{text}");
    assert!(text.contains("use redis:// instead of rediss://"), "{text}");

    // redis:// at a TLS-only port.
    let url = format!("redis://127.0.0.1:{}", tls.port());
    let text = start(Supervisor::builder().redis(url)).await.to_string();
    assert!(text.contains("TLS-only port"), "{text}");
    assert!(text.contains("use rediss://"), "{text}");
}
