//! amqps: real clients that verify the server's certificate (Go amqp091-go's DialTLS,
//! Python pika with an ssl context, lapin with rustls) against certificates each test
//! makes with the `openssl` command: a round trip at 1 and 2 shards, EXTERNAL with a client
//! certificate, an expired server certificate, a client trusting another CA, a client
//! without a certificate where one is required, a client speaking plain AMQP to the TLS
//! port, and a certificate reloaded on SIGHUP and through the management API under open
//! connections. HTTPS: the management API and /metrics over HTTPS, verified by
//! rabbitmqadmin and curl, and plain HTTP to an HTTPS port answered and closed.
//!
//! Needs `openssl`, `curl`, `rabbitmqadmin`, `go` with the amqp091-go sources and Debian's
//! `python3-pika` (`apt-get install -y openssl curl golang-go
//! golang-github-rabbitmq-amqp091-go-dev python3-pika`, rabbitmqadmin from RabbitMQ);
//! scripts/test installs them. These tests always run warren (TLS listeners are warren's
//! flags), also under `WARREN_TEST_AMQP_URL`.

mod common;
#[path = "lapin_support/mod.rs"]
mod lapin_support;

use common::{fresh_temp_dir, wait_until, Broker};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const AMQP091_SRC: &str = "/usr/share/gocode/src/github.com/rabbitmq/amqp091-go";
/// Debian's python3-pika lives in the system Python's dist-packages.
const PYTHON: &str = "/usr/bin/python3";
const INSTALL_HINT: &str = "apt-get update && apt-get install -y openssl golang-go \
     golang-github-rabbitmq-amqp091-go-dev python3-pika";
/// How long a client run may take.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// A directory of certificates made with `openssl` (EC P-256 keys: quick to make), removed
/// on Drop.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); install it: {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The password of the PKCS#12 files.
const P12_PASSWORD: &str = "warren-test";

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: fresh_temp_dir("warren-pki"),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.sign("server", "ca", "localhost", "server", 30);
        pki.sign("expired", "ca", "localhost", "server", -1);
        pki.sign("client", "ca", "admin", "client", 30);
        pki.sign("stranger", "ca", "nobody-here", "client", 30);
        pki.sign("server2", "other-ca", "localhost", "server", 30);
        // lapin takes its client certificate as PKCS#12.
        openssl(
            &pki.dir,
            &[
                "pkcs12",
                "-export",
                "-in",
                "client.crt",
                "-inkey",
                "client.key",
                "-out",
                "client.p12",
                "-passout",
                &format!("pass:{P12_PASSWORD}"),
            ],
        );
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// NAME.crt and NAME.key: a self-signed CA.
    fn ca(&self, name: &str) {
        let mut args = vec!["req", "-x509"];
        args.extend(EC_KEY);
        let (key, crt, subject) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN=warren test {name}"),
        );
        args.extend([
            "-keyout", &key, "-out", &crt, "-days", "30", "-subj", &subject,
        ]);
        openssl(&self.dir, &args);
    }

    /// NAME.crt and NAME.key, signed by CA, with common name CN (and it as DNS name, plus
    /// 127.0.0.1), for `usage` server or client, valid for `days` (-1: expired already).
    fn sign(&self, name: &str, ca: &str, cn: &str, usage: &str, days: i32) {
        let mut args = vec!["req"];
        args.extend(EC_KEY);
        let (key, csr, crt, subject) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(&self.dir, &args);
        let ext = format!("{name}.ext");
        let eku = if usage == "server" {
            "serverAuth"
        } else {
            "clientAuth"
        };
        fs::write(
            self.dir.join(&ext),
            format!("subjectAltName=DNS:{cn},IP:127.0.0.1\nextendedKeyUsage={eku}\n"),
        )
        .unwrap();
        let (ca_crt, ca_key, days) = (format!("{ca}.crt"), format!("{ca}.key"), days.to_string());
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-set_serial",
                "1",
                "-out",
                &crt,
                "-days",
                &days,
                "-extfile",
                &ext,
            ],
        );
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// The broker and the clients
// ---------------------------------------------------------------------------------------

/// warren with a TLS listener on 127.0.0.1:0 using `server` (SERVER.crt, SERVER.key) and
/// `extra` flags; returns it and its TLS address.
fn start_tls(shards: usize, pki: &Pki, server: &str, extra: &[&str]) -> (Broker, SocketAddr) {
    let (cert, key, ca) = (
        pki.path(&format!("{server}.crt")),
        pki.path(&format!("{server}.key")),
        pki.path("ca.crt"),
    );
    let mut args = vec![
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-ca",
        &ca,
    ];
    args.extend(extra);
    let data_dir = fresh_temp_dir("warren-test");
    let broker = Broker::start_in(shards, data_dir, &args);
    let tls = tls_address(&broker);
    (broker, tls)
}

/// The amqps address in the broker's ready line.
fn tls_address(broker: &Broker) -> SocketAddr {
    let log = broker.log();
    log.lines()
        .find(|l| l.contains("ready to accept connections"))
        .and_then(|l| {
            let rest = &l[l.find("tls_address=")? + "tls_address=".len()..];
            rest.split(|c: char| c.is_whitespace() || c == ',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no tls_address in the ready line:\n{log}"))
}

/// What a client run printed, and whether it succeeded.
struct Run {
    ok: bool,
    output: String,
}

/// Runs a command to completion within `CLIENT_DEADLINE` (killed and failed after it: a
/// hang is a failure, never a wait).
fn run(mut command: Command) -> Run {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}; install: {INSTALL_HINT}"));
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} hung for {CLIENT_DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    Run {
        ok: status.success(),
        output,
    }
}

/// The Go client, built once per test process into target/.
fn go_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        assert!(
            Path::new(AMQP091_SRC).is_dir(),
            "amqp091-go sources missing; install: {INSTALL_HINT}"
        );
        let exe = Path::new(env!("CARGO_BIN_EXE_warren"));
        let target = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let out_dir = target.join(format!("go-tls-client-{}", std::process::id()));
        fs::create_dir_all(&out_dir).unwrap();
        let cache = target.join("go-cache");
        fs::create_dir_all(&cache).unwrap();
        let bin = out_dir.join("tls_client");
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg("./tls_client")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go"))
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", out_dir.display()))
            .env("GOCACHE", &cache)
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .output()
            .unwrap_or_else(|e| panic!("cannot run go ({e}); install: {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "go build failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// How a client connects: the CA it trusts, an optional client certificate, EXTERNAL.
#[derive(Clone, Copy)]
struct Client<'a> {
    ca: &'a str,
    cert: Option<&'a str>,
    external: bool,
}

impl<'a> Client<'a> {
    fn trusting(ca: &'a str) -> Client<'a> {
        Client {
            ca,
            cert: None,
            external: false,
        }
    }

    fn env(&self, pki: &Pki, command: &mut Command) {
        command.env("TLS_CA", pki.path(&format!("{}.crt", self.ca)));
        if let Some(cert) = self.cert {
            command
                .env("TLS_CLIENT_CERT", pki.path(&format!("{cert}.crt")))
                .env("TLS_CLIENT_KEY", pki.path(&format!("{cert}.key")));
        }
        if self.external {
            command.env("SASL", "EXTERNAL");
        }
    }

    fn go(&self, pki: &Pki, tls: SocketAddr) -> Run {
        let mut command = Command::new(go_client());
        // The URL names "localhost", the name in the server's certificate.
        command.env(
            "AMQP_URL",
            format!("amqps://admin:admin@localhost:{}/", tls.port()),
        );
        self.env(pki, &mut command);
        run(command)
    }

    fn pika_command(&self, pki: &Pki, tls: SocketAddr) -> Command {
        let mut command = Command::new(PYTHON);
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/tls_client.py"))
            .env("AMQP_PORT", tls.port().to_string())
            .env("AMQP_USER", "admin")
            .env("AMQP_PASS", "admin");
        self.env(pki, &mut command);
        command
    }

    fn pika(&self, pki: &Pki, tls: SocketAddr) -> Run {
        run(self.pika_command(pki, tls))
    }
}

fn assert_round_trip(client: &str, run: &Run) {
    assert!(
        run.ok && run.output.contains("round trip ok"),
        "{client} failed:\n{}",
        run.output
    );
}

fn assert_refused(client: &str, run: &Run, expected: &[&str]) {
    assert!(
        !run.ok,
        "{client} succeeded where it must fail:\n{}",
        run.output
    );
    assert!(
        expected.iter().any(|e| run.output.contains(e)),
        "{client} failed, but not with any of {expected:?}:\n{}",
        run.output
    );
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn round_trip_at(shards: usize) {
    let pki = Pki::new();
    let (_broker, tls) = start_tls(shards, &pki, "server", &[]);
    let client = Client::trusting("ca");
    for _ in 0..shards * 2 {
        assert_round_trip("go DialTLS", &client.go(&pki, tls));
    }
    assert_round_trip("pika", &client.pika(&pki, tls));
}

#[test]
fn go_and_pika_verify_the_certificate_and_round_trip_at_1_shard() {
    round_trip_at(1);
}

#[test]
fn go_and_pika_verify_the_certificate_and_round_trip_at_2_shards() {
    round_trip_at(2);
}

#[test]
fn external_logs_in_as_the_client_certificates_common_name() {
    let pki = Pki::new();
    let (broker, tls) = start_tls(1, &pki, "server", &["--tls-verify-peer"]);
    let client = Client {
        ca: "ca",
        cert: Some("client"),
        external: true,
    };
    assert_round_trip("go EXTERNAL", &client.go(&pki, tls));
    assert_round_trip("pika EXTERNAL", &client.pika(&pki, tls));
    assert!(
        broker
            .log()
            .contains("user 'admin' authenticated and granted access to vhost '/'"),
        "{}",
        broker.log()
    );
    // A certificate whose name is no user's is refused, with RabbitMQ's log line.
    let stranger = Client {
        cert: Some("stranger"),
        ..client
    };
    assert_refused(
        "go EXTERNAL as a stranger",
        &stranger.go(&pki, tls),
        &[
            "403",
            "ACCESS_REFUSED",
            "access refused",
            "username or password not allowed",
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || broker
        .log()
        .contains(
            "EXTERNAL login refused: user 'nobody-here' - invalid credentials"
        )));
    // Without a certificate (it is asked for, not required), EXTERNAL is refused.
    let no_cert = Client {
        cert: None,
        ..client
    };
    assert_refused(
        "go EXTERNAL without a certificate",
        &no_cert.go(&pki, tls),
        &[
            "403",
            "ACCESS_REFUSED",
            "access refused",
            "username or password not allowed",
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || broker
        .log()
        .contains(
            "EXTERNAL login refused: connection has no peer certificate"
        )));
    // PLAIN still works on the same listener without a certificate.
    assert_round_trip("go PLAIN", &Client::trusting("ca").go(&pki, tls));
}

#[test]
fn fail_if_no_peer_cert_refuses_a_client_without_one() {
    let pki = Pki::new();
    let (_broker, tls) = start_tls(
        1,
        &pki,
        "server",
        &["--tls-verify-peer", "--tls-fail-if-no-peer-cert"],
    );
    let run = Client::trusting("ca").go(&pki, tls);
    assert!(!run.ok, "go without a certificate got in:\n{}", run.output);
    let with_cert = Client {
        ca: "ca",
        cert: Some("client"),
        external: false,
    };
    assert_round_trip("go with a certificate", &with_cert.go(&pki, tls));
}

#[test]
fn an_expired_server_certificate_is_refused_by_the_clients() {
    let pki = Pki::new();
    let (_broker, tls) = start_tls(1, &pki, "expired", &[]);
    let client = Client::trusting("ca");
    assert_refused("go", &client.go(&pki, tls), &["expired"]);
    assert_refused(
        "pika",
        &client.pika(&pki, tls),
        &["expired", "CERTIFICATE_VERIFY_FAILED"],
    );
}

#[test]
fn a_client_trusting_another_ca_refuses_the_server() {
    let pki = Pki::new();
    let (_broker, tls) = start_tls(1, &pki, "server", &[]);
    let client = Client::trusting("other-ca");
    assert_refused("go", &client.go(&pki, tls), &["unknown authority"]);
    assert_refused(
        "pika",
        &client.pika(&pki, tls),
        &["CERTIFICATE_VERIFY_FAILED", "unable to get local issuer"],
    );
}

#[test]
fn plain_amqp_to_the_tls_port_gets_an_alert_and_the_socket_closed() {
    let pki = Pki::new();
    let (broker, tls) = start_tls(1, &pki, "server", &[]);
    let mut socket = TcpStream::connect(tls).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    socket.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut answer = Vec::new();
    // EOF, not a timeout: the broker answers and closes.
    socket
        .read_to_end(&mut answer)
        .expect("the TLS port must close the socket, not leave the client hanging");
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "expected a TLS alert record, got {answer:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || broker
        .log()
        .contains("TLS handshake failed")));
    // The broker serves TLS clients as before.
    assert_round_trip("go", &Client::trusting("ca").go(&pki, tls));
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let pki = Pki::new();
    // The broker reads its certificate from files the test replaces.
    let live = fresh_temp_dir("warren-live-cert");
    let copy = |from: &str, to: &str| {
        fs::copy(pki.dir.join(from), live.join(to)).unwrap();
    };
    copy("server.crt", "cert.pem");
    copy("server.key", "key.pem");
    let (cert, key) = (
        live.join("cert.pem").to_string_lossy().into_owned(),
        live.join("key.pem").to_string_lossy().into_owned(),
    );
    let data_dir = fresh_temp_dir("warren-test");
    let broker = Broker::start_in(
        1,
        data_dir,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let tls = tls_address(&broker);
    // A pika connection opened under the first certificate, held open.
    let mut held: Child = Client::trusting("ca")
        .pika_command(&pki, tls)
        .env("HOLD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pika");
    let mut held_out = BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    held_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected", "the held client did not connect");

    copy("server2.crt", "cert.pem");
    copy("server2.key", "key.pem");
    let pid = broker.pid().expect("a warren child") as libc::pid_t;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    assert!(
        wait_until(Duration::from_secs(10), || broker
            .log()
            .contains("TLS certificate reloaded")),
        "{}",
        broker.log()
    );
    // New handshakes present the new certificate: a client trusting only its CA gets in,
    // one trusting only the old CA does not.
    assert_round_trip("go, new CA", &Client::trusting("other-ca").go(&pki, tls));
    assert_refused(
        "go, old CA",
        &Client::trusting("ca").go(&pki, tls),
        &["unknown authority"],
    );
    // The connection opened before the reload works on.
    held.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    held_out.read_to_string(&mut rest).unwrap();
    let status = held.wait().unwrap();
    assert!(
        status.success() && rest.contains("round trip ok"),
        "the held connection failed after the reload: {rest}"
    );
    let _ = fs::remove_dir_all(&live);
}

// ---------------------------------------------------------------------------------------
// lapin with rustls
// ---------------------------------------------------------------------------------------

/// lapin's TLS settings: trust `ca` (CA.crt), present `identity` (NAME.p12) if given.
fn lapin_tls(pki: &Pki, ca: &str, identity: Option<&str>) -> lapin::tcp::OwnedTLSConfig {
    lapin::tcp::OwnedTLSConfig {
        identity: identity.map(|name| lapin::tcp::OwnedIdentity {
            der: fs::read(pki.dir.join(format!("{name}.p12"))).unwrap(),
            password: P12_PASSWORD.into(),
        }),
        cert_chain: Some(fs::read_to_string(pki.dir.join(format!("{ca}.crt"))).unwrap()),
    }
}

async fn lapin_connect(
    url: &str,
    tls: lapin::tcp::OwnedTLSConfig,
) -> lapin::Result<lapin_support::Connection> {
    lapin_support::step(
        "lapin amqps connect",
        lapin_support::Connection::connect_with_config(
            url,
            lapin_support::ConnectionProperties::default(),
            tls,
        ),
    )
    .await
}

/// Declare, publish, get on a new channel of `conn`.
async fn lapin_round_trip(conn: &lapin_support::Connection) {
    let channel = lapin_support::channel(conn).await;
    let queue = lapin_support::declare_server_named(&channel).await;
    lapin_support::publish(&channel, "", &queue, b"hello over rustls").await;
    let got = lapin_support::get_within(&channel, &queue, lapin_support::STEP_DEADLINE).await;
    assert_eq!(got.delivery.data, b"hello over rustls");
}

/// The URL lapin connects to: "localhost", the name in the server's certificate.
fn amqps_url(tls: SocketAddr, credentials: &str, query: &str) -> String {
    format!("amqps://{credentials}localhost:{}/%2f{query}", tls.port())
}

fn lapin_round_trip_at(shards: usize) {
    let pki = Pki::new();
    let (_broker, tls) = start_tls(shards, &pki, "server", &[]);
    let url = amqps_url(tls, "admin:admin@", "");
    lapin_support::run(async {
        // Enough connections to land on every shard.
        for _ in 0..shards * 2 {
            let conn = lapin_connect(&url, lapin_tls(&pki, "ca", None))
                .await
                .unwrap_or_else(|e| panic!("lapin over amqps: {e}"));
            lapin_round_trip(&conn).await;
            let _ = conn.close(200, "bye").await;
        }
    });
}

#[test]
fn lapin_rustls_verifies_the_certificate_and_round_trips_at_1_shard() {
    lapin_round_trip_at(1);
}

#[test]
fn lapin_rustls_verifies_the_certificate_and_round_trips_at_2_shards() {
    lapin_round_trip_at(2);
}

#[test]
fn lapin_rustls_external_logs_in_with_its_client_certificate() {
    let pki = Pki::new();
    let (broker, tls) = start_tls(1, &pki, "server", &["--tls-verify-peer"]);
    let url = amqps_url(tls, "", "?auth_mechanism=external");
    lapin_support::run(async {
        let conn = lapin_connect(&url, lapin_tls(&pki, "ca", Some("client")))
            .await
            .unwrap_or_else(|e| panic!("lapin EXTERNAL: {e}"));
        lapin_round_trip(&conn).await;
        let _ = conn.close(200, "bye").await;
    });
    assert!(
        broker
            .log()
            .contains("user 'admin' authenticated and granted access to vhost '/'"),
        "{}",
        broker.log()
    );
}

#[test]
fn lapin_rustls_refuses_a_server_signed_by_another_ca() {
    let pki = Pki::new();
    let (_broker, tls) = start_tls(1, &pki, "server", &[]);
    let url = amqps_url(tls, "admin:admin@", "");
    lapin_support::run(async {
        match lapin_connect(&url, lapin_tls(&pki, "other-ca", None)).await {
            Ok(_) => panic!("lapin trusting another CA connected"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("UnknownIssuer") || text.contains("certificate"),
                    "lapin failed, but not on the certificate: {text}"
                );
            }
        }
        // The broker serves verified clients as before.
        let conn = lapin_connect(&url, lapin_tls(&pki, "ca", None))
            .await
            .unwrap_or_else(|e| panic!("lapin over amqps: {e}"));
        lapin_round_trip(&conn).await;
    });
}

// ---------------------------------------------------------------------------------------
// HTTPS: the management API and /metrics
// ---------------------------------------------------------------------------------------

/// The address in the first log line holding `message` (`address=IP:PORT`).
fn logged_address(broker: &Broker, message: &str) -> SocketAddr {
    let log = broker.log();
    log.lines()
        .filter(|l| l.contains(message))
        .find_map(|l| {
            let rest = &l[l.find(" address=")? + " address=".len()..];
            rest.split(|c: char| c.is_whitespace() || c == ',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no address logged with {message:?}:\n{log}"))
}

const MANAGEMENT_HTTPS_LINE: &str = "management API (HTTPS) listening";
const PROMETHEUS_HTTPS_LINE: &str = "prometheus metrics (HTTPS) listening";

/// curl over HTTPS trusting CA.crt; prints the status last (`status=NNN`).
fn curl(pki: &Pki, ca: &str, args: &[&str], url: &str) -> Run {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
        .arg(pki.path(&format!("{ca}.crt")))
        .args(["--write-out", "\nstatus=%{http_code}\n"])
        .args(args)
        .arg(url);
    run(command)
}

/// rabbitmqadmin over HTTPS, verifying the server against CA.crt.
fn rabbitmqadmin(pki: &Pki, ca: &str, https: SocketAddr, args: &[&str]) -> Run {
    let mut command = Command::new("rabbitmqadmin");
    command
        .args(["--host", "localhost", "--port"])
        .arg(https.port().to_string())
        .args(["--ssl", "--ssl-ca-cert-file"])
        .arg(pki.path(&format!("{ca}.crt")))
        .args(["--username", "guest", "--password", "guest"])
        .args(args);
    run(command)
}

/// A plain HTTP request to an HTTPS port: the answer, read to the end (the socket must be
/// closed, not left open).
fn plain_http_to(address: SocketAddr) -> String {
    let mut socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    socket
        .read_to_end(&mut answer)
        .expect("an HTTPS port must answer plain HTTP and close, not leave the client hanging");
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn management_api_and_metrics_over_https_are_verified_by_rabbitmqadmin_and_curl() {
    let pki = Pki::new();
    let (broker, _tls) = start_tls(
        1,
        &pki,
        "server",
        &[
            "--management-tls-listen",
            "127.0.0.1:0",
            "--prometheus-tls-listen",
            "127.0.0.1:0",
        ],
    );
    // Given alone, the HTTPS listeners replace the plain ones, as in RabbitMQ.
    assert_eq!(broker.management_url(), None, "{}", broker.log());
    assert_eq!(broker.prometheus_url(), None, "{}", broker.log());
    let management = logged_address(&broker, MANAGEMENT_HTTPS_LINE);
    let prometheus = logged_address(&broker, PROMETHEUS_HTTPS_LINE);

    let declared = rabbitmqadmin(
        &pki,
        "ca",
        management,
        &["declare", "queue", "name=over-https"],
    );
    assert!(declared.ok, "rabbitmqadmin declare:\n{}", declared.output);
    let listed = rabbitmqadmin(&pki, "ca", management, &["list", "queues", "name"]);
    assert!(
        listed.ok && listed.output.contains("over-https"),
        "rabbitmqadmin list queues:\n{}",
        listed.output
    );
    assert_refused(
        "rabbitmqadmin trusting another CA",
        &rabbitmqadmin(&pki, "other-ca", management, &["list", "queues"]),
        &["CERTIFICATE_VERIFY_FAILED", "certificate verify failed"],
    );

    let metrics_url = format!("https://localhost:{}/metrics", prometheus.port());
    let metrics = curl(&pki, "ca", &[], &metrics_url);
    assert!(
        metrics.ok
            && metrics.output.contains("status=200")
            && metrics.output.contains("# TYPE rabbitmq_"),
        "curl /metrics over HTTPS:\n{}",
        metrics.output
    );
    let overview = curl(
        &pki,
        "ca",
        &["--user", "guest:guest"],
        &format!("https://localhost:{}/api/overview", management.port()),
    );
    assert!(
        overview.ok && overview.output.contains("\"management_version\""),
        "curl /api/overview over HTTPS:\n{}",
        overview.output
    );
    assert_refused(
        "curl trusting another CA",
        &curl(&pki, "other-ca", &[], &metrics_url),
        &["certificate", "SSL"],
    );

    // Plain HTTP to either HTTPS port: told to use https, and the socket closed.
    for address in [management, prometheus] {
        let answer = plain_http_to(address);
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("https://"),
            "plain HTTP to {address}: {answer:?}"
        );
    }
    // The listeners serve HTTPS as before.
    assert!(curl(&pki, "ca", &[], &metrics_url).ok);
}

#[test]
fn https_listeners_need_the_certificate_files() {
    let data_dir = fresh_temp_dir("warren-test");
    let (status, output) =
        common::start_expecting_exit(1, &data_dir, &["--management-tls-listen", "127.0.0.1:0"]);
    let _ = fs::remove_dir_all(&data_dir);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("--management-tls-listen needs --tls-cert and --tls-key"),
        "{output}"
    );
}

// ---------------------------------------------------------------------------------------
// Reload through the management API
// ---------------------------------------------------------------------------------------

/// Runs warrenctl against the plain management API at `base` (http://IP:PORT) as `user`.
fn warrenctl(base: &str, user: &str, args: &[&str]) -> (Option<i32>, String) {
    let url = base.replacen("http://", &format!("http://{user}@"), 1);
    let mut command = Command::new(env!("CARGO_BIN_EXE_warrenctl"));
    command.arg("--url").arg(url).args(args);
    command.env_remove("WARRENCTL_URL");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warrenctl");
    let deadline = Instant::now() + CLIENT_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warrenctl {args:?} hung");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_management_call_reloads_the_certificate_and_keeps_open_connections() {
    let pki = Pki::new();
    let live = fresh_temp_dir("warren-live-cert");
    let copy = |from: &str, to: &str| {
        fs::copy(pki.dir.join(from), live.join(to)).unwrap();
    };
    copy("server.crt", "cert.pem");
    copy("server.key", "key.pem");
    let (cert, key) = (
        live.join("cert.pem").to_string_lossy().into_owned(),
        live.join("key.pem").to_string_lossy().into_owned(),
    );
    let data_dir = fresh_temp_dir("warren-test");
    let broker = Broker::start_in(
        1,
        data_dir,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--management-listen",
            "127.0.0.1:0",
            "--management-tls-listen",
            "127.0.0.1:0",
        ],
    );
    let tls = tls_address(&broker);
    let https = logged_address(&broker, MANAGEMENT_HTTPS_LINE);
    let plain = broker.management_url().expect("plain management API");
    let overview_url = format!("https://localhost:{}/api/overview", https.port());
    let reload_url = format!("https://localhost:{}/api/warren/tls/reload", https.port());

    // A lapin connection opened under the first certificate, held open.
    let url = amqps_url(tls, "admin:admin@", "");
    let mut held = None;
    lapin_support::run(async {
        let conn = lapin_connect(&url, lapin_tls(&pki, "ca", None))
            .await
            .unwrap_or_else(|e| panic!("lapin over amqps: {e}"));
        lapin_round_trip(&conn).await;
        held = Some(conn);
    });
    let held = held.unwrap();

    // A file that is no certificate: refused with the file and the fault named, and the
    // certificate in use stays, for amqps and HTTPS.
    fs::write(live.join("cert.pem"), "not a certificate\n").unwrap();
    let (code, output) = warrenctl(&plain, "guest:guest", &["reload_tls_certificates"]);
    assert_eq!(code, Some(65), "warrenctl with a bad file:\n{output}");
    assert!(
        output.contains("cert.pem") && output.contains("no PEM certificate"),
        "{output}"
    );
    assert!(broker
        .log()
        .contains("TLS certificate not reloaded; the old one stays in use"));
    assert_round_trip("go, old CA", &Client::trusting("ca").go(&pki, tls));
    assert!(curl(&pki, "ca", &["--user", "guest:guest"], &overview_url).ok);

    // Administrators only.
    let created = curl(
        &pki,
        "ca",
        &[
            "--user",
            "guest:guest",
            "--request",
            "PUT",
            "--data",
            r#"{"password":"watcher","tags":"monitoring"}"#,
        ],
        &format!("https://localhost:{}/api/users/watcher", https.port()),
    );
    assert!(created.output.contains("status=201"), "{}", created.output);
    let refused = curl(
        &pki,
        "ca",
        &["--user", "watcher:watcher", "--request", "POST"],
        &reload_url,
    );
    assert!(
        refused.output.contains("status=401") && refused.output.contains("Not administrator"),
        "{}",
        refused.output
    );

    // The new certificate, reloaded through HTTPS (this request's own handshake still
    // under the old one).
    copy("server2.crt", "cert.pem");
    copy("server2.key", "key.pem");
    let reloaded = curl(
        &pki,
        "ca",
        &["--user", "guest:guest", "--request", "POST"],
        &reload_url,
    );
    assert!(
        reloaded.output.contains("status=204"),
        "reload call:\n{}",
        reloaded.output
    );
    assert!(broker.log().contains("TLS certificate reloaded"));
    // New handshakes present it, on amqps and HTTPS alike.
    assert_round_trip("go, new CA", &Client::trusting("other-ca").go(&pki, tls));
    assert_refused(
        "go, old CA",
        &Client::trusting("ca").go(&pki, tls),
        &["unknown authority"],
    );
    assert!(
        curl(&pki, "other-ca", &["--user", "guest:guest"], &overview_url).ok,
        "HTTPS with the new certificate"
    );
    assert!(!curl(&pki, "ca", &["--user", "guest:guest"], &overview_url).ok);
    // warrenctl's success.
    let (code, output) = warrenctl(&plain, "guest:guest", &["reload_tls_certificates"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("reloaded"), "{output}");

    // The connection opened before the reloads works on.
    lapin_support::run(async {
        lapin_round_trip(&held).await;
        let _ = held.close(200, "bye").await;
    });
    let _ = fs::remove_dir_all(&live);
}
