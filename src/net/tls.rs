//! TLS (amqps): the server's rustls configurations (amqps, and HTTPS for the
//! management and Prometheus listeners), built from the files of
//! `config::TlsConfig` and swapped whole on a reload (SIGHUP or the
//! management API's reload call), the handshake
//! of an accepted socket, and the two transforms a TLS connection's socket
//! tasks apply (ciphertext in → plaintext into the read buffer; plaintext
//! out → ciphertext). rustls's `ServerConnection` is driven by hand over the
//! connection's own socket reads and writes, so that TLS sits between the
//! socket and the frame reader and nothing above `net` knows of it, save
//! for the one thing the broker needs: the login name the client's
//! certificate gives EXTERNAL (`TlsPeer`). Imports only `config` of warren.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::config::{CertLoginFrom, TlsConfig};

/// Why a TLS configuration could not be built from its files.
#[derive(Debug)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM item.
    File { path: PathBuf, why: String },
    /// rustls refused the certificate, key or CA.
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::File { path, why } => write!(f, "TLS: {}: {}", path.display(), why),
            TlsError::Config(why) => write!(f, "TLS: {}", why),
        }
    }
}

impl std::error::Error for TlsError {}

/// What a TLS connection tells the broker about its client: the login name
/// in its verified certificate, for the EXTERNAL mechanism.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsPeer {
    /// Whether peer verification is on (RabbitMQ's `verify_peer`): without
    /// it a certificate proves nothing, and EXTERNAL refuses.
    pub(crate) verify_peer: bool,
    /// The certificate's login name (`ssl_cert_login_from`), if the client
    /// sent a certificate and it holds one.
    pub(crate) cert_login: Option<String>,
    /// The client sent a certificate (verified, as the handshake passed).
    pub(crate) has_cert: bool,
}

/// The server side of TLS for every shard and for the HTTPS listeners: the
/// settings and the current rustls configurations, one for amqps and one
/// for HTTPS, built from the same files. A reload builds both anew and
/// swaps them in together; connections keep the configuration they were
/// accepted with, new handshakes take the new one. The lock is taken once
/// per accepted connection, never on the message path.
pub struct TlsServer {
    settings: TlsConfig,
    current: RwLock<Configs>,
}

/// The configurations in force.
#[derive(Clone)]
struct Configs {
    amqps: Arc<ServerConfig>,
    https: Arc<ServerConfig>,
}

impl TlsServer {
    pub fn new(settings: TlsConfig) -> Result<TlsServer, TlsError> {
        let configs = build(&settings)?;
        Ok(TlsServer {
            settings,
            current: RwLock::new(configs),
        })
    }

    /// Reads the files again; on success new handshakes (amqps and HTTPS)
    /// use them. On failure the configurations in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build(&self.settings)?;
        match self.current.write() {
            Ok(mut current) => *current = configs,
            Err(poisoned) => *poisoned.into_inner() = configs,
        }
        Ok(())
    }

    fn configs(&self) -> Configs {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.configs().amqps
    }

    /// The configuration for a new HTTPS connection (the management API and
    /// Prometheus listeners): the same certificate and key, HTTP/1.1 by
    /// ALPN, and no client certificate asked for, as RabbitMQ's
    /// `management.ssl` and `prometheus.ssl` default to `verify_none`
    /// whatever the AMQP listeners verify.
    pub fn https_config(&self) -> Arc<ServerConfig> {
        self.configs().https
    }

    /// A new server session for an accepted socket.
    pub(crate) fn session(&self) -> Result<ServerConnection, rustls::Error> {
        let mut session = ServerConnection::new(self.config())?;
        // The writer hands over everything the host queued (bounded by the
        // host's own output limits); rustls's default 64 KiB would make it
        // loop.
        session.set_buffer_limit(None);
        Ok(session)
    }

    /// What the broker learns of a client whose handshake is done.
    pub(crate) fn peer(&self, session: &ServerConnection) -> TlsPeer {
        let cert = session.peer_certificates().and_then(|c| c.first());
        TlsPeer {
            verify_peer: self.settings.verify_peer,
            has_cert: cert.is_some(),
            cert_login: cert.and_then(|c| cert_login(c.as_ref(), self.settings.cert_login_from)),
        }
    }
}

fn file_error(path: &Path, why: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Builds both configurations from one reading of the files: TLS 1.3 and
/// 1.2, the certificate chain and key; amqps asks for client certificates
/// as RabbitMQ's `verify` and `fail_if_no_peer_cert` say (`verify_none`:
/// none requested; `verify_peer`: requested and verified against the CA
/// file, and required only with `fail_if_no_peer_cert`), HTTPS never does.
fn build(settings: &TlsConfig) -> Result<Configs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&settings.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| file_error(&settings.key, e))?;
    let verifier = if settings.verify_peer {
        let Some(ca) = &settings.ca else {
            return Err(TlsError::Config(
                "--tls-verify-peer needs --tls-ca (the CA that signs client certificates)".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots.add(cert).map_err(|e| file_error(ca, e))?;
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if settings.fail_if_no_peer_cert {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        builder
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?
    } else {
        WebPkiClientVerifier::no_client_auth()
    };
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let amqps = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut https = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // The management API speaks HTTP/1.1 only.
    https.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Configs {
        amqps: Arc::new(amqps),
        https: Arc::new(https),
    })
}

/// Moves what rustls has to send into `out` (appended).
pub(crate) fn take_ciphertext(session: &mut ServerConnection, out: &mut Vec<u8>) {
    while session.wants_write() {
        // Writing into a Vec cannot fail.
        if session.write_tls(out).is_err() {
            break;
        }
    }
}

/// Feeds ciphertext read from the socket to the session and appends the
/// plaintext it yields to `buf`. Ok(true) once the client has sent its
/// close_notify (the end of the stream, as EOF is for a plain socket). An
/// error leaves an alert in the session for the writer to send.
pub(crate) fn decrypt(
    session: &mut ServerConnection,
    mut ciphertext: &[u8],
    buf: &mut BytesMut,
) -> Result<bool, rustls::Error> {
    let mut closed = false;
    while !ciphertext.is_empty() {
        // rustls takes at most a record buffer's worth per call, and refuses
        // more while its plaintext is unread: plaintext is drained each round.
        if session.read_tls(&mut ciphertext).is_err() {
            return Err(rustls::Error::General("TLS input refused".into()));
        }
        let state = session.process_new_packets()?;
        closed |= state.peer_has_closed();
        drain_plaintext(session, state.plaintext_bytes_to_read(), buf);
    }
    Ok(closed)
}

/// Appends `available` bytes of the session's plaintext to `buf`.
pub(crate) fn drain_plaintext(
    session: &mut ServerConnection,
    available: usize,
    buf: &mut BytesMut,
) {
    if available == 0 {
        return;
    }
    let start = buf.len();
    buf.resize(start + available, 0);
    let mut filled = start;
    while filled < buf.len() {
        match session.reader().read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    buf.truncate(filled);
}

/// The plaintext a session holds already (sent with the handshake's last
/// flight), appended to `buf`.
pub(crate) fn take_early_plaintext(session: &mut ServerConnection, buf: &mut BytesMut) {
    let available = session
        .process_new_packets()
        .map(|s| s.plaintext_bytes_to_read())
        .unwrap_or(0);
    drain_plaintext(session, available, buf);
}

/// Encrypts `plaintext`, appending the records to `out`.
pub(crate) fn encrypt(
    session: &mut ServerConnection,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    session.writer().write_all(plaintext)?;
    take_ciphertext(session, out);
    Ok(())
}

/// The login name in a certificate, as rabbitmq_auth_mechanism_ssl takes
/// it (`ssl_cert_login_from`): the subject's last common name, or the
/// first DNS (else e-mail) subject alternative name.
pub(crate) fn cert_login(der: &[u8], from: CertLoginFrom) -> Option<String> {
    let tbs = der::tbs_certificate(der)?;
    match from {
        CertLoginFrom::CommonName => der::common_name(tbs.subject),
        CertLoginFrom::SubjectAlternativeName => tbs.extensions.and_then(der::first_san),
    }
}

/// A minimal DER walk over an X.509 certificate: only what the login name
/// needs (subject CN, subjectAltName), reading lengths with bounds checks
/// and never panicking on a malformed certificate.
mod der {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const BOOLEAN: u8 = 0x01;
    /// 2.5.4.3, id-at-commonName.
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    /// 2.5.29.17, id-ce-subjectAltName.
    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    /// GeneralName's context tags: [1] rfc822Name, [2] dNSName.
    const SAN_EMAIL: u8 = 0x81;
    const SAN_DNS: u8 = 0x82;

    /// One TLV: its tag, its contents, and what follows it.
    fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let count = (first & 0x7f) as usize;
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            (len, &rest[count..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    pub(super) struct Tbs<'a> {
        pub(super) subject: &'a [u8],
        pub(super) extensions: Option<&'a [u8]>,
    }

    /// Certificate ::= SEQUENCE { tbsCertificate, ... }; TBSCertificate ::=
    /// SEQUENCE { [0] version OPTIONAL, serial, signature, issuer, validity,
    /// subject, subjectPublicKeyInfo, [1] [2] OPTIONAL, [3] extensions OPTIONAL }.
    pub(super) fn tbs_certificate(der: &[u8]) -> Option<Tbs<'_>> {
        let (SEQUENCE, cert, _) = next(der)? else {
            return None;
        };
        let (SEQUENCE, mut tbs, _) = next(cert)? else {
            return None;
        };
        let mut fields = Vec::with_capacity(10);
        while !tbs.is_empty() {
            let (tag, value, rest) = next(tbs)?;
            fields.push((tag, value));
            tbs = rest;
        }
        // Skip the optional version, then: serial, signature, issuer,
        // validity, subject.
        let start = usize::from(fields.first()?.0 == 0xa0);
        let subject = fields.get(start + 4)?;
        if subject.0 != SEQUENCE {
            return None;
        }
        let extensions =
            fields
                .iter()
                .find(|(tag, _)| *tag == 0xa3)
                .and_then(|(_, v)| match next(v) {
                    Some((SEQUENCE, exts, _)) => Some(exts),
                    _ => None,
                });
        Some(Tbs {
            subject: subject.1,
            extensions,
        })
    }

    /// Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value }: the last
    /// common name (RabbitMQ takes the most specific one).
    pub(super) fn common_name(mut name: &[u8]) -> Option<String> {
        let mut found = None;
        while !name.is_empty() {
            let (tag, mut rdn, rest) = next(name)?;
            name = rest;
            if tag != SET {
                continue;
            }
            while !rdn.is_empty() {
                let (_, attribute, rest) = next(rdn)?;
                rdn = rest;
                let (OID, oid, value) = next(attribute)? else {
                    continue;
                };
                if oid == OID_COMMON_NAME {
                    let (_, text, _) = next(value)?;
                    found = Some(String::from_utf8_lossy(text).into_owned());
                }
            }
        }
        found
    }

    /// The first dNSName of the subjectAltName extension, else its first
    /// rfc822Name.
    pub(super) fn first_san(mut extensions: &[u8]) -> Option<String> {
        while !extensions.is_empty() {
            let (_, extension, rest) = next(extensions)?;
            extensions = rest;
            let (OID, oid, mut value) = next(extension)? else {
                continue;
            };
            if oid != OID_SUBJECT_ALT_NAME {
                continue;
            }
            if let Some((BOOLEAN, _, rest)) = next(value) {
                value = rest;
            }
            let (OCTET_STRING, names, _) = next(value)? else {
                return None;
            };
            let (SEQUENCE, mut names, _) = next(names)? else {
                return None;
            };
            let mut email = None;
            while !names.is_empty() {
                let (tag, name, rest) = next(names)?;
                names = rest;
                match tag {
                    SAN_DNS => return Some(String::from_utf8_lossy(name).into_owned()),
                    SAN_EMAIL if email.is_none() => {
                        email = Some(String::from_utf8_lossy(name).into_owned())
                    }
                    _ => {}
                }
            }
            return email;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_certificates_give_no_login_and_no_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..512 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8
                })
                .collect();
            let _ = cert_login(&bytes, CertLoginFrom::CommonName);
            let _ = cert_login(&bytes, CertLoginFrom::SubjectAlternativeName);
        }
        assert_eq!(
            cert_login(&[0x30, 0x84, 0xff], CertLoginFrom::CommonName),
            None
        );
    }
}
