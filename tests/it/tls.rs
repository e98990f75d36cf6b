//! TLS and mutual TLS against the real daemon, with certificates made here
//! by rcgen: tonic and reqwest clients that trust the CA get through, plain
//! text and untrusted or missing client certificates do not, and replacing
//! the certificate files changes what new connections see.

use std::{path::PathBuf, time::Duration};

use driftd::proto::{self as pb, driftd_client::DriftdClient, ColumnRole};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::support::*;

/// A certificate authority of the test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for the names the tests connect to.
    fn server(&self) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Leaf {
        self.leaf(&["model-server"], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Where the daemon's TLS files are.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl Files {
    fn write(dir: &std::path::Path, server: &Leaf, client_ca: Option<&Ca>) -> Self {
        let f = Self {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_ca: dir.join("client-ca.crt"),
        };
        f.replace(server);
        if let Some(ca) = client_ca {
            replace_file(&f.client_ca, &ca.pem);
        }
        f
    }

    /// Puts a new certificate and key in place, key first, as a certificate
    /// manager might: for a moment they do not match.
    fn replace(&self, server: &Leaf) {
        replace_file(&self.key, &server.key);
        replace_file(&self.cert, &server.cert);
    }

    fn env(&self, mtls: bool) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DRIFTD_TLS__CERT_FILE", self.cert.display().to_string()),
            ("DRIFTD_TLS__KEY_FILE", self.key.display().to_string()),
            ("DRIFTD_TLS__RELOAD_INTERVAL", "100ms".into()),
        ];
        if mtls {
            env.push((
                "DRIFTD_TLS__CLIENT_CA_FILE",
                self.client_ca.display().to_string(),
            ));
        }
        env
    }
}

/// An HTTPS client trusting only `cas`, presenting `identity` if given,
/// and opening a new connection for every request.
fn https(cas: &[&Ca], identity: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    for ca in cas {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap());
    }
    if let Some(leaf) = identity {
        let pem = format!("{}{}", leaf.cert, leaf.key);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn start(config: driftd::config::Config, client: reqwest::Client) -> TestDaemon {
    TestDaemon::start_with(
        config,
        Access {
            client,
            https: true,
            token: None,
        },
    )
    .await
}

/// One IngestBatch over a new TLS connection trusting `ca`.
async fn grpc_call(d: &TestDaemon, ca: &Ca, identity: Option<&Leaf>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    let call = async {
        let channel = Endpoint::from_shared(format!("https://{}", d.grpc_addr))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| format!("{e:?}"))?
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        DriftdClient::new(channel)
            .ingest_batch(batch(
                "m",
                "v",
                vec![numeric("x", ColumnRole::Input, vec![1.0])],
            ))
            .await
            .map(|_| ())
            .map_err(|e| format!("call: {e:?}"))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

async fn https_get(client: &reqwest::Client, d: &TestDaemon, path: &str) -> Result<(), String> {
    let r = client
        .get(d.url(path))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("status {}", r.status()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_trusting_the_ca_get_through_and_plain_text_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("driftd test CA");
    let files = Files::write(dir.path(), &ca.server(), None);
    let d = start(
        test_config(&dir.path().join("data"), &files.env(false)),
        https(&[&ca], None),
    )
    .await;

    grpc_call(&d, &ca, None).await.unwrap();
    https_get(&https(&[&ca], None), &d, "/metrics")
        .await
        .unwrap();

    let other = Ca::new("another CA");
    assert!(grpc_call(&d, &other, None).await.is_err());
    assert!(https_get(&https(&[&other], None), &d, "/metrics")
        .await
        .is_err());

    let plain_grpc = async {
        let mut c = DriftdClient::connect(format!("http://{}", d.grpc_addr))
            .await
            .map_err(|e| e.to_string())?;
        c.get_status(pb::GetStatusRequest {
            model: "m".into(),
            version: "v".into(),
        })
        .await
        .map_err(|e| e.to_string())
    };
    let res = tokio::time::timeout(Duration::from_secs(10), plain_grpc)
        .await
        .expect("a plain-text gRPC client fails quickly");
    assert!(res.is_err(), "{res:?}");
    let plain_http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://{}/metrics", d.http_addr))
        .send()
        .await;
    assert!(plain_http.is_err(), "{plain_http:?}");
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("driftd test CA");
    let client = ca.client();
    let files = Files::write(dir.path(), &ca.server(), Some(&ca));
    let d = start(
        test_config(&dir.path().join("data"), &files.env(true)),
        https(&[&ca], Some(&client)),
    )
    .await;

    grpc_call(&d, &ca, Some(&client)).await.unwrap();
    https_get(&https(&[&ca], Some(&client)), &d, "/metrics")
        .await
        .unwrap();

    let err = grpc_call(&d, &ca, None).await.unwrap_err();
    assert!(!err.is_empty());
    assert!(https_get(&https(&[&ca], None), &d, "/metrics")
        .await
        .is_err());

    let stranger = Ca::new("another CA").client();
    assert!(grpc_call(&d, &ca, Some(&stranger)).await.is_err());
    assert!(https_get(&https(&[&ca], Some(&stranger)), &d, "/healthz")
        .await
        .is_err());
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_files_are_served_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (Ca::new("first CA"), Ca::new("second CA"));
    let files = Files::write(dir.path(), &ca1.server(), None);
    let d = start(
        test_config(&dir.path().join("data"), &files.env(false)),
        https(&[&ca1, &ca2], None),
    )
    .await;
    let (client1, client2) = (https(&[&ca1], None), https(&[&ca2], None));
    https_get(&client1, &d, "/healthz").await.unwrap();
    assert!(https_get(&client2, &d, "/healthz").await.is_err());

    files.replace(&ca2.server());
    let (c2, daemon) = (&client2, &d);
    wait_until(
        "the new certificate is served",
        Duration::from_secs(10),
        move || async move { https_get(c2, daemon, "/healthz").await.is_ok() },
    )
    .await;
    assert!(https_get(&client1, &d, "/healthz").await.is_err());
    grpc_call(&d, &ca2, None).await.unwrap();
    assert!(grpc_call(&d, &ca1, None).await.is_err());

    // A file that cannot be used is counted and the certificate in force
    // stays.
    let failed = move || async move {
        sample(
            &daemon.scrape().await,
            "driftd_reloads_total",
            &[("source", "tls"), ("outcome", "failed")],
        )
        .unwrap()
    };
    let before = failed().await;
    replace_file(&files.cert, "not a certificate\n");
    wait_until(
        "the failed reload is counted",
        Duration::from_secs(10),
        move || async move { failed().await > before },
    )
    .await;
    https_get(&client2, &d, "/healthz").await.unwrap();
    assert!(
        sample(
            &d.scrape().await,
            "driftd_reloads_total",
            &[("source", "tls"), ("outcome", "reloaded")]
        )
        .unwrap()
            >= 1.0
    );
    d.stop().await.unwrap();
}

/// With `tls.http = false` only gRPC is encrypted: the HTTP listener stays
/// plain text, for probes that cannot present a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_can_be_left_off_the_http_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("driftd test CA");
    let files = Files::write(dir.path(), &ca.server(), Some(&ca));
    let mut env = files.env(true);
    env.push(("DRIFTD_TLS__HTTP", "false".into()));
    let d = TestDaemon::start(test_config(&dir.path().join("data"), &env)).await;
    reqwest::get(d.url("/readyz"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    grpc_call(&d, &ca, Some(&ca.client())).await.unwrap();
    assert!(grpc_call(&d, &ca, None).await.is_err());
    d.stop().await.unwrap();
}
