//! The socket a loadgen connection shares between its reader and writer tasks,
//! and the two primitives both hot loops use: read what is there, write it all.
//! An `amqps://` connection runs rustls's client session by hand over the same
//! socket (decrypting what a read brings, encrypting what a write sends); a
//! plain one takes one branch more than before and nothing else.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use futures_lite::future::poll_fn;
use futures_lite::{AsyncBufRead, AsyncWrite};
use glommio::net::{Preallocated, TcpStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// A socket shared by a connection's reader and writer tasks, borrowed only
/// inside a single poll. It reads through a receive buffer of its own, so
/// that the kernel writes into initialised memory (see `read_into`).
pub type Stream = Rc<RefCell<Socket>>;

/// A connection's socket, and its TLS session for `amqps://`.
pub struct Socket {
    tcp: TcpStream<Preallocated>,
    tls: Option<Box<Tls>>,
}

struct Tls {
    session: ClientConnection,
    /// Ciphertext to write, reused from write to write.
    cipher: Vec<u8>,
}

/// The socket's receive buffer: as large as the connection's read buffer
/// (`client::READ_BUFFER_SIZE`), so that a busy consumer takes as much per
/// recv(2) as it did reading into that buffer directly.
const RECEIVE_BUFFER_SIZE: usize = crate::client::READ_BUFFER_SIZE;

/// Wraps a connected socket for `read_into` and `write_all`.
pub fn stream(socket: TcpStream) -> Stream {
    Rc::new(RefCell::new(Socket {
        tcp: socket.buffered_with(Preallocated::new(RECEIVE_BUFFER_SIZE)),
        tls: None,
    }))
}

/// Wraps a connected socket in TLS and runs the handshake. As PerfTest does
/// with `amqps://`, the server's certificate is not checked against any CA
/// (loadgen measures; it does not guard secrets), but the handshake's
/// signatures are.
pub async fn tls_stream(socket: TcpStream, host: &str) -> io::Result<Stream> {
    let name = ServerName::try_from(host.to_string()).map_err(io::Error::other)?;
    let mut session = ClientConnection::new(client_config(), name).map_err(io::Error::other)?;
    // A write hands over a whole batch at once; rustls's default 64 KiB
    // limit on plaintext waiting to be encrypted would refuse part of it.
    session.set_buffer_limit(None);
    let stream = stream(socket);
    stream.borrow_mut().tls = Some(Box::new(Tls {
        session,
        cipher: Vec::new(),
    }));
    let mut sink = BytesMut::new();
    loop {
        write_all(&stream, &[]).await?;
        let handshaking = stream
            .borrow()
            .tls
            .as_ref()
            .is_some_and(|t| t.session.is_handshaking());
        if !handshaking {
            return Ok(stream);
        }
        if read_into(&stream, &mut sink).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts any server certificate, checking the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads whatever the socket has, appending it (decrypted, over TLS) to
/// `buf`; 0 is EOF (or TLS's close_notify). Over TLS a read may add nothing
/// to `buf` (a record not yet whole) and still return the bytes it read.
/// The kernel writes into the stream's receive buffer and what arrived is
/// copied: recv(2) into `buf`'s spare capacity would need a `&mut [u8]`
/// over uninitialised memory.
pub async fn read_into(stream: &Stream, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut socket = stream.borrow_mut();
        let Socket { tcp, tls } = &mut *socket;
        let mut tcp = Pin::new(tcp);
        let data = futures_lite::ready!(tcp.as_mut().poll_fill_buf(cx))?;
        let n = data.len();
        let closed = match tls {
            None => {
                buf.extend_from_slice(data);
                false
            }
            Some(tls) => decrypt(&mut tls.session, data, buf)?,
        };
        tcp.consume(n);
        Poll::Ready(Ok(if closed { 0 } else { n }))
    })
    .await
}

/// Feeds ciphertext to the session, appending its plaintext to `buf`; true
/// once the server sent close_notify.
fn decrypt(
    session: &mut ClientConnection,
    mut data: &[u8],
    buf: &mut BytesMut,
) -> io::Result<bool> {
    let mut closed = false;
    while !data.is_empty() {
        session.read_tls(&mut data)?;
        let state = session.process_new_packets().map_err(io::Error::other)?;
        closed |= state.peer_has_closed();
        let available = state.plaintext_bytes_to_read();
        if available > 0 {
            let start = buf.len();
            buf.resize(start + available, 0);
            let n = session.reader().read(&mut buf[start..])?;
            buf.truncate(start + n);
        }
    }
    Ok(closed)
}

/// Writes all of `data` (encrypted, over TLS, with whatever the session
/// has to send besides).
pub async fn write_all(stream: &Stream, data: &[u8]) -> io::Result<()> {
    let cipher = {
        let mut socket = stream.borrow_mut();
        match &mut socket.tls {
            None => None,
            Some(tls) => {
                let mut cipher = std::mem::take(&mut tls.cipher);
                cipher.clear();
                tls.session.writer().write_all(data)?;
                while tls.session.wants_write() {
                    tls.session.write_tls(&mut cipher)?;
                }
                Some(cipher)
            }
        }
    };
    let Some(cipher) = cipher else {
        return write_raw(stream, data).await;
    };
    let written = write_raw(stream, &cipher).await;
    if let Some(tls) = &mut stream.borrow_mut().tls {
        tls.cipher = cipher;
    }
    written
}

async fn write_raw(stream: &Stream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| {
            let mut socket = stream.borrow_mut();
            Pin::new(&mut socket.tcp).poll_write(cx, data)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Raises RLIMIT_MEMLOCK so that glommio's reactors can register their
/// memory (`needed` bytes in all): to infinity where allowed, else to the
/// hard limit.
pub fn raise_memlock(needed: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let to_hard = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &to_hard) };
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if limit.rlim_cur >= needed {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "RLIMIT_MEMLOCK is {} bytes and could not be raised to {needed}: raise it with `ulimit -l unlimited` (or --ulimit memlock=-1 in a container)",
            limit.rlim_cur
        )))
    }
}
