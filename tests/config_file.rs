//! `--config FILE`: a TOML file of the flags' settings, read by the real binary. Its
//! settings apply, flags given on the command line override it, and an unknown key or a
//! bad value stops the start with a message naming it.

mod common;
#[path = "lapin_support/mod.rs"]
mod lapin_support;

use std::fs;

use common::{fresh_temp_dir, start_expecting_exit, unique, Broker};
use lapin_support::*;

/// A config file in its own temp dir (removed by the caller).
fn config_file(text: &str) -> (std::path::PathBuf, String) {
    let dir = fresh_temp_dir("warren-config");
    let path = dir.join("warren.toml");
    fs::write(&path, text).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

#[test]
fn the_files_settings_apply_and_flags_override_them() {
    if std::env::var(common::EXTERNAL_URL_VAR).is_ok() {
        return; // warren's own flags
    }
    let pki = fresh_temp_dir("warren-config-pki");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .current_dir(&pki)
        .output()
        .expect("openssl (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both spellings of a key are read; `shards` is overridden by the test's --shards 1.
    let (dir, path) = config_file(&format!(
        "# warren's settings\n\
         shards = 2\n\
         max-message-size = 100\n\
         tls_listen = [\"127.0.0.1:0\"]\n\
         tls-cert = \"{0}/cert.pem\"\n\
         tls-key = \"{0}/key.pem\"\n\
         management-tls-listen = [\"127.0.0.1:0\"]\n\
         prometheus_tls_listen = \"127.0.0.1:0\"\n\
         log-format = \"text\"\n",
        pki.display()
    ));
    let b = Broker::start_with(1, &["--config", &path]);
    let log = b.log();
    let ready = log
        .lines()
        .find(|l| l.contains("ready to accept connections"))
        .unwrap();
    assert!(ready.contains("shards=1"), "the flag did not win: {ready}");
    assert!(
        ready.contains("tls_address=127.0.0.1:"),
        "the file's TLS listener is missing: {ready}"
    );
    for https in [
        "management API (HTTPS) listening",
        "prometheus metrics (HTTPS) listening",
    ] {
        assert!(
            log.contains(https),
            "the file's HTTPS listener is missing:\n{log}"
        );
    }
    run(async {
        let (_conn, ch) = open(&b.url()).await;
        let queue = unique("configured");
        declare_queue(&ch, &queue).await;
        publish(&ch, "", &queue, &[1u8; 100]).await;
        let watch = ErrorWatch::channel(&ch);
        let _ = ch
            .basic_publish(
                "",
                &queue,
                BasicPublishOptions::default(),
                &[1u8; 101],
                BasicProperties::default(),
            )
            .await;
        let text = watch.expect_code(406).await;
        assert!(
            text.contains("larger than configured max size 100"),
            "{text}"
        );
    });
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&pki);
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let (dir, path) = config_file("data-dir = \"/tmp\"\nmax-mesage-size = 100\n");
    let data = fresh_temp_dir("warren-config-data");
    let (status, output) = start_expecting_exit(1, &data, &["--config", &path]);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("unknown key `max-mesage-size`"), "{output}");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&data);
}

#[test]
fn a_bad_value_is_refused_naming_the_setting() {
    let (dir, path) = config_file("segment-size = \"lots\"\n");
    let data = fresh_temp_dir("warren-config-data");
    let (status, output) = start_expecting_exit(1, &data, &["--config", &path]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("--segment-size"), "{output}");
    // A mailbox interval past 100 ms would hold busy traffic between
    // shards for that long: refused, from the file as from the flag.
    let (dir3, path3) = config_file("mailbox-interval-us = 200000\n");
    let (status, output) = start_expecting_exit(1, &data, &["--config", &path3]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("--mailbox-interval-us"), "{output}");
    assert!(output.contains("not in 0..=100000"), "{output}");
    let _ = fs::remove_dir_all(&dir3);
    let (dir2, path2) = config_file("shards = [\n");
    let (status, output) = start_expecting_exit(1, &data, &["--config", &path2]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("warren.toml"), "{output}");
    for d in [dir, dir2, data] {
        let _ = fs::remove_dir_all(&d);
    }
}
