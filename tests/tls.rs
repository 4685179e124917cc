//! amqps: real clients that verify the server's certificate (Go amqp091-go's DialTLS,
//! Python pika with an ssl context) against certificates each test makes with the
//! `openssl` command: a round trip at 1 and 2 shards, EXTERNAL with a client certificate,
//! an expired server certificate, a client trusting another CA, a client without a
//! certificate where one is required, a client speaking plain AMQP to the TLS port, and a
//! certificate reloaded on SIGHUP under an open connection.
//!
//! Needs `openssl`, `go` with the amqp091-go sources and Debian's `python3-pika`
//! (`apt-get install -y openssl golang-go golang-github-rabbitmq-amqp091-go-dev
//! python3-pika`); scripts/test installs them. These tests always run warren (TLS
//! listeners are warren's flags), also under `WARREN_TEST_AMQP_URL`.

mod common;

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
    let log = broker.log();
    let tls = log
        .lines()
        .find(|l| l.contains("ready to accept connections"))
        .and_then(|l| {
            let rest = &l[l.find("tls_address=")? + "tls_address=".len()..];
            rest.split(|c: char| c.is_whitespace() || c == ',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no tls_address in the ready line:\n{log}"));
    (broker, tls)
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
    let tls: SocketAddr = {
        let log = broker.log();
        let line = log
            .lines()
            .find(|l| l.contains("tls_address="))
            .expect("ready line");
        let rest = &line[line.find("tls_address=").unwrap() + "tls_address=".len()..];
        rest.split(|c: char| c.is_whitespace() || c == ',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
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
