//! TLS and mutual TLS for both listeners, with rustls (ring provider).
//!
//! [`Tls`] holds one rustls `ServerConfig` per listener (they differ only in
//! ALPN: `h2` for gRPC, `http/1.1` for the HTTP server), built from
//! `tls.cert_file`, `tls.key_file` and, for mutual TLS, `tls.client_ca_file`.
//! When any of these files changes it builds new configurations and swaps
//! them in; connections accepted afterwards use them, open ones keep theirs.
//! Files that cannot be used (unreadable, not PEM, a key that does not match
//! the certificate, as while a cert and its key are replaced one after the
//! other) are logged and counted, and the previous configuration stays.
//!
//! [`Incoming`] accepts TCP connections and runs each TLS handshake in its
//! own task with a deadline, so a slow or silent client never holds up the
//! accept loop; it hands finished streams to tonic (as a `Stream`) or to
//! axum (as a `Listener`). This module knows rustls and TCP, and not what
//! the servers speak over the streams.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_util::sync::CancellationToken;

use crate::{
    config::TlsConfig,
    metrics::{Metrics, ReloadOutcome, ReloadSource},
    watch,
};

/// Longest TLS handshake; a client that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes that may run at once per listener; beyond it the listener
/// stops accepting until one finishes, instead of growing without bound.
const MAX_HANDSHAKES: usize = 512;

/// Files that cannot be turned into a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or is not PEM.
    #[error("cannot read PEM from {path}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file holds no item of the kind it should.
    #[error("{path} holds no {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// The client CA bundle holds no usable CA certificate.
    #[error("{path} holds no usable CA certificate")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the certificate and key, most often because the key
    /// does not belong to the certificate.
    #[error("the certificate in {cert} and the key in {key} cannot be used together")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

impl Error {
    /// The configuration key of the file at fault.
    pub fn key(&self, cfg: &TlsConfig) -> &'static str {
        let path = match self {
            Error::Pem { path, .. } | Error::Empty { path, .. } => path,
            Error::ClientCa { .. } => return "tls.client_ca_file",
            Error::Pair { .. } => return "tls.key_file",
        };
        if *path == cfg.cert_file {
            "tls.cert_file"
        } else if *path == cfg.key_file {
            "tls.key_file"
        } else {
            "tls.client_ca_file"
        }
    }
}

/// Which listener a connection arrives on: decides the ALPN protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The HTTP server: HTTP/1.1 only.
    Http,
}

/// The configurations in force.
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = |source| Error::Pem {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(Error::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Reads the files of `cfg` and builds both server configurations.
///
/// # Errors
/// [`Error`] naming the file that cannot be used.
fn load(cfg: &TlsConfig) -> Result<Configs, Error> {
    let chain = certs(&cfg.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => Error::Empty {
            path: cfg.key_file.clone(),
            what: "private key",
        },
        source => Error::Pem {
            path: cfg.key_file.clone(),
            source,
        },
    })?;
    let verifier = match &cfg.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            // Unusable entries are skipped; none at all fails below.
            roots.add_parsable_certificates(certs(path)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|source| Error::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            Some(verifier)
        }
        None => None,
    };
    let build = |alpn: &[u8]| -> Result<Arc<ServerConfig>, Error> {
        let pair = |source| Error::Pair {
            cert: cfg.cert_file.clone(),
            key: cfg.key_file.clone(),
            source,
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(pair)?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(pair)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Configs {
        grpc: build(b"h2")?,
        http: build(b"http/1.1")?,
    })
}

/// Checks that `cfg`'s files make a usable configuration, as the
/// configuration loader does before anything starts.
///
/// # Errors
/// [`Error`] naming the file that cannot be used.
pub fn check(cfg: &TlsConfig) -> Result<(), Error> {
    load(cfg).map(|_| ())
}

/// The TLS configurations in force; cheap to clone.
#[derive(Clone)]
pub struct Tls(Arc<Inner>);

struct Inner {
    cfg: TlsConfig,
    current: RwLock<Arc<Configs>>,
    /// The files' stamp when `current` was built.
    stamp: watch::Stamp,
    metrics: Metrics,
}

impl Tls {
    /// Reads the files once now.
    ///
    /// # Errors
    /// [`Error`] naming the file that cannot be used.
    pub fn new(cfg: TlsConfig, metrics: Metrics) -> Result<Self, Error> {
        let stamp = watch::Stamp::of(&cfg.files());
        let current = load(&cfg)?;
        Ok(Self(Arc::new(Inner {
            cfg,
            current: RwLock::new(Arc::new(current)),
            stamp,
            metrics,
        })))
    }

    /// Whether the HTTP listener serves TLS too.
    pub fn on_http(&self) -> bool {
        self.0.cfg.http
    }

    fn config(&self, proto: Proto) -> Arc<ServerConfig> {
        let c = self.0.current.read().unwrap_or_else(|p| p.into_inner());
        match proto {
            Proto::Grpc => c.grpc.clone(),
            Proto::Http => c.http.clone(),
        }
    }

    /// Rebuilds the configurations whenever a file changes, until `cancel`
    /// fires.
    pub async fn watch(self, cancel: CancellationToken) {
        let this = self.clone();
        watch::on_change(
            self.0.cfg.files(),
            self.0.stamp.clone(),
            self.0.cfg.reload_interval,
            cancel,
            move || this.reload(),
        )
        .await;
    }

    fn reload(&self) {
        match load(&self.0.cfg) {
            Ok(configs) => {
                *self.0.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(configs);
                self.0
                    .metrics
                    .reload(ReloadSource::Tls, ReloadOutcome::Reloaded);
                tracing::info!(path = %self.0.cfg.cert_file.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                self.0
                    .metrics
                    .reload(ReloadSource::Tls, ReloadOutcome::Failed);
                tracing::warn!(error = %error, "TLS files not reloaded; the previous certificate stays in force");
            }
        }
    }

    /// Accepts connections on `listener` and performs their handshakes
    /// until `cancel` fires.
    pub fn incoming(
        &self,
        listener: TcpListener,
        proto: Proto,
        cancel: CancellationToken,
    ) -> Incoming {
        let local_addr = listener.local_addr();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, self.clone(), proto, tx, cancel));
        Incoming { rx, local_addr }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Tls,
    proto: Proto,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    cancel: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    res = listener.accept() => res.map(|x| (x, permit)),
                },
                // The semaphore is never closed.
                Err(_) => return,
            },
        };
        let ((tcp, peer), permit) = match accepted {
            Ok(x) => x,
            Err(error) => {
                // As axum and hyper do: errors of one connection are
                // skipped, others (such as too many open files) wait a
                // little before the next try.
                if !matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) {
                    tracing::warn!(error = %error, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        // Small answers (an acknowledgement, a status) must not wait for
        // the peer's delayed ACK under Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config(proto));
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    drop(permit);
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(peer = %peer, error = %error, "TLS handshake failed");
                }
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Connections whose TLS handshake completed.
pub struct Incoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: io::Result<SocketAddr>,
}

impl Incoming {
    /// The connections as the stream tonic's `serve_with_incoming` takes.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<TlsStream<TcpStream>>> {
        IncomingStream(self.rx)
    }
}

struct IncomingStream(mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>);

impl tokio_stream::Stream for IncomingStream {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(|(s, _)| Ok(s)))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept loop stopped, so the server is shutting down and
            // will not ask again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.local_addr {
            Ok(a) => Ok(*a),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}
