//! The HTTP side of warrenctl: where the management API is (`--url`), one blocking
//! request at a time, and what a failed request means as a rabbitmqctl exit code.
//!
//! Imports only external crates (ureq, base64, serde_json); never the broker.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

/// rabbitmqctl's exit codes (sysexits(3)), as `RabbitMQ.CLI.Core.ExitCodes` names them,
/// plus EX_NOPERM for a refused login or a user without the rights: rabbitmqctl has no
/// such case (it authenticates with the Erlang cookie), an HTTP client does.
pub mod exit {
    pub const USAGE: i32 = 64;
    pub const DATAERR: i32 = 65;
    pub const NOUSER: i32 = 67;
    pub const UNAVAILABLE: i32 = 69;
    pub const SOFTWARE: i32 = 70;
    pub const TEMPFAIL: i32 = 75;
    pub const NOPERM: i32 = 77;
}

/// Why a command failed: the text for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The management API's address and credentials, from `--url`.
#[derive(Clone)]
pub struct Target {
    /// `http://HOST:PORT` plus any path prefix, without credentials or a final slash.
    pub base: String,
    pub user: String,
    pub password: String,
}

impl Target {
    /// Parses `http://USER:PASS@HOST:PORT[/prefix]`; user and password may be
    /// percent-encoded (a password with `@` or `:` in it must be).
    pub fn parse(url: &str) -> Result<Target, Failure> {
        let bad = |why: &str| {
            Failure::new(
                exit::USAGE,
                format!("Error: invalid --url {:?}: {why}", redact(url)),
            )
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("it must start with http:// (https is not supported)"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        if hostport.is_empty() {
            return Err(bad("no host"));
        }
        let (user, password) = match userinfo {
            None => ("guest".to_string(), "guest".to_string()),
            Some(info) => {
                let (u, p) = info.split_once(':').unwrap_or((info, ""));
                (
                    percent_decode(u).ok_or_else(|| bad("bad percent-encoding in the user"))?,
                    percent_decode(p).ok_or_else(|| bad("bad percent-encoding in the password"))?,
                )
            }
        };
        Ok(Target {
            base: format!("http://{hostport}{path}"),
            user,
            password,
        })
    }
}

impl fmt::Display for Target {
    /// The URL without the password, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme_less = self.base.trim_start_matches("http://");
        write!(f, "http://{}@{scheme_less}", self.user)
    }
}

/// A URL as given, with the password (if any) replaced, for error messages.
fn redact(url: &str) -> String {
    match Target::parse_userinfo_span(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_string(),
    }
}

impl Target {
    /// The byte range of the password in `http://user:PASSWORD@host`, if there is one.
    fn parse_userinfo_span(url: &str) -> Option<(usize, usize)> {
        let scheme_end = url.find("://")? + 3;
        let authority_end = url[scheme_end..]
            .find('/')
            .map_or(url.len(), |i| scheme_end + i);
        let at = url[scheme_end..authority_end].rfind('@')? + scheme_end;
        let colon = url[scheme_end..at].find(':')? + scheme_end;
        Some((colon + 1, at))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One path segment of an API URL: everything but RFC 3986's unreserved characters is
/// percent-encoded, so the vhost `/` becomes `%2F` as the API expects.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An answer from the API with a status other than 401, 403 and 5xx (those become a
/// [`Failure`] at once): the command decides what a 404 or a 400 means.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `reason` of RabbitMQ's error shape `{"error": ..., "reason": ...}`.
    pub fn reason(&self) -> String {
        let field = |k: &str| self.body.get(k).and_then(Value::as_str).map(str::to_string);
        let reason = field("reason")
            .or_else(|| field("error"))
            .unwrap_or_else(|| format!("HTTP status {}", self.status));
        // RabbitMQ escapes its reasons for HTML (`&lt;&lt;"nonsense"&gt;&gt;`).
        reason
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
            .trim_end()
            .to_string()
    }
}

pub struct Client {
    pub target: Target,
    agent: ureq::Agent,
    authorization: String,
}

impl Client {
    pub fn new(target: Target, timeout: Duration) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build();
        let credentials = format!("{}:{}", target.user, target.password);
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        Client {
            target,
            agent,
            authorization,
        }
    }

    pub fn get(&self, path: &str) -> Result<Reply, Failure> {
        self.request("GET", path, None, &[])
    }

    /// GET that must succeed: anything but 2xx is a failure with the API's reason.
    pub fn get_ok(&self, path: &str) -> Result<Value, Failure> {
        let reply = self.get(path)?;
        if reply.ok() {
            return Ok(reply.body);
        }
        Err(Failure::new(
            code_for_status(reply.status),
            format!("Error:\n{}", reply.reason()),
        ))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Reply, Failure> {
        self.request("PUT", path, Some(body), &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Reply, Failure> {
        self.request("POST", path, Some(body), &[])
    }

    pub fn delete(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, Failure> {
        self.request("DELETE", path, None, headers)
    }

    /// Sends one request to `base + path` (path starts with `/api/`). Transport errors,
    /// 401, 403 and 5xx are failures; other statuses are returned to the caller.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, Failure> {
        let (status, text) = self.request_text(method, path, body, headers)?;
        Ok(Reply {
            status,
            body: json_or_text(text),
        })
    }

    /// As `request`, with the answer's body as the text it is (a trace log file).
    pub fn request_text(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), Failure> {
        let url = format!("{}{path}", self.target.base);
        let mut request = self
            .agent
            .request(method, &url)
            // No `Accept: application/json`: RabbitMQ answers 406 to it on the purge
            // endpoint (DELETE .../contents), which has no body to offer.
            .set("Authorization", &self.authorization);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(b) => request
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => request.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(self.unreachable(&t)),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        if !matches!(status, 401 | 403 | 500..=599) {
            return Ok((status, text));
        }
        let reply = Reply {
            status,
            body: json_or_text(text),
        };
        Err(match status {
            401 => Failure::new(
                exit::NOPERM,
                format!(
                    "Error: access refused: the management API at {} did not accept user \"{}\" ({}).\n\
                     Check the user and password in --url or WARRENCTL_URL, and the user's tags \
                     (most commands need administrator).",
                    self.target,
                    self.target.user,
                    reply.reason()
                ),
            ),
            403 => Failure::new(
                exit::NOPERM,
                format!(
                    "Error: user \"{}\" lacks the rights for {method} {path} ({}).\n\
                     This needs a user tagged administrator (or monitoring to read, policymaker for policies).",
                    self.target.user,
                    reply.reason()
                ),
            ),
            _ => Failure::new(
                exit::SOFTWARE,
                format!(
                    "Error: the management API failed on {method} {path}: {} {}",
                    status,
                    reply.reason()
                ),
            ),
        })
    }

    fn unreachable(&self, t: &ureq::Transport) -> Failure {
        let detail = t.to_string();
        let timed_out = detail.contains("timed out") || detail.contains("Timeout");
        let code = if timed_out && t.kind() == ureq::ErrorKind::Io {
            exit::TEMPFAIL
        } else {
            exit::UNAVAILABLE
        };
        Failure::new(
            code,
            format!(
                "Error: unable to perform an operation on the broker at {}. \
                 Its management API did not answer.\n\n\
                 Most common reasons for this are:\n\n\
                 \x20* The broker is not running, or not yet ready (see 'warrenctl await_startup')\n\
                 \x20* Its management listener is on another address or port (warren's --management-listen)\n\
                 \x20* A firewall is in the way\n\n\
                 DIAGNOSTICS\n===========\n\n{detail}",
                self.target
            ),
        )
    }
}

/// An answer's body: JSON, or the text itself when it is not JSON.
fn json_or_text(text: String) -> Value {
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// The exit code for an unexpected status from a GET.
pub fn code_for_status(status: u16) -> i32 {
    match status {
        400 | 404 | 405 | 409 => exit::DATAERR,
        401 | 403 => exit::NOPERM,
        _ => exit::SOFTWARE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_credentials() {
        let t = Target::parse("http://u%40x:p%3Aw@h:15672/").unwrap();
        assert_eq!(t.base, "http://h:15672");
        assert_eq!((t.user.as_str(), t.password.as_str()), ("u@x", "p:w"));
        let t = Target::parse("http://localhost:1/prefix/").unwrap();
        assert_eq!(t.base, "http://localhost:1/prefix");
        assert_eq!(t.user, "guest");
        assert!(Target::parse("https://h").is_err());
        assert_eq!(redact("http://a:secret@h:1/x"), "http://a:***@h:1/x");
    }

    #[test]
    fn segments_encode_the_default_vhost() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("a b.c"), "a%20b.c");
    }
}
