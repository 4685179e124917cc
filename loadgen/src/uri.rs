//! AMQP URIs (`amqp://user:pass@host:port/vhost`), parsed by hand after RabbitMQ's
//! URI spec: user, password and vhost are percent-decoded, the port defaults to 5672,
//! the user and password to guest/guest. An empty path means the vhost "/", and so
//! does "/%2f"; RabbitMQ's spec reads an empty path segment ("amqp://h/") as the empty
//! vhost, which no broker has by default, so loadgen reads it as "/" too.
//! `amqps://` is AMQP over TLS, on port 5671 by default.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpUri {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// `amqps://`: over TLS.
    pub tls: bool,
}

impl AmqpUri {
    pub fn parse(uri: &str) -> Result<AmqpUri> {
        let (rest, tls) = if let Some(rest) = uri.strip_prefix("amqp://") {
            (rest, false)
        } else if let Some(rest) = uri.strip_prefix("amqps://") {
            (rest, true)
        } else {
            return Err(Error::new(format!("not an amqp:// URI: {uri}")));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        // Query parameters (heartbeat=..., and so on) are accepted and ignored.
        let path = path.split('?').next().unwrap_or("");
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.find(':') {
                Some(i) => (decode(&info[..i])?, decode(&info[i + 1..])?),
                None => (decode(info)?, "guest".to_string()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| Error::new(format!("unterminated IPv6 address in {uri}")))?;
            let port = v6[end + 1..].strip_prefix(':');
            (v6[..end].to_string(), port)
        } else {
            match hostport.rfind(':') {
                Some(i) => (hostport[..i].to_string(), Some(&hostport[i + 1..])),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            None | Some("") if tls => 5671,
            None | Some("") => 5672,
            Some(p) => p
                .parse()
                .map_err(|_| Error::new(format!("bad port {p:?} in {uri}")))?,
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            decode(path)?
        };
        Ok(AmqpUri {
            host,
            port,
            user,
            password,
            vhost,
            tls,
        })
    }

    /// The URI with the password masked, for reports.
    pub fn display_safe(&self) -> String {
        format!(
            "{}://{}@{}:{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            self.user,
            self.host,
            self.port,
            encode_vhost(&self.vhost)
        )
    }
}

fn encode_vhost(vhost: &str) -> String {
    vhost.replace('%', "%25").replace('/', "%2f")
}

fn decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::new(format!("bad percent-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::new(format!("{s:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri_is_decoded() {
        let uri = AmqpUri::parse("amqp://us%40er:p%3Ass@example.com:5673/my%2fvhost").unwrap();
        assert_eq!(uri.user, "us@er");
        assert_eq!(uri.password, "p:ss");
        assert_eq!(uri.host, "example.com");
        assert_eq!(uri.port, 5673);
        assert_eq!(uri.vhost, "my/vhost");
    }

    #[test]
    fn defaults_apply() {
        let uri = AmqpUri::parse("amqp://127.0.0.1").unwrap();
        assert_eq!(
            (
                uri.user.as_str(),
                uri.password.as_str(),
                uri.port,
                uri.vhost.as_str()
            ),
            ("guest", "guest", 5672, "/")
        );
        assert_eq!(AmqpUri::parse("amqp://h/%2f").unwrap().vhost, "/");
        assert_eq!(AmqpUri::parse("amqp://h/").unwrap().vhost, "/");
        assert_eq!(AmqpUri::parse("amqp://[::1]:5000/v").unwrap().host, "::1");
    }

    #[test]
    fn amqps_is_tls_on_5671() {
        let uri = AmqpUri::parse("amqps://u:p@localhost/").unwrap();
        assert!(uri.tls);
        assert_eq!(uri.port, 5671);
        assert!(!AmqpUri::parse("amqp://h").unwrap().tls);
        assert_eq!(AmqpUri::parse("amqps://h:5000").unwrap().port, 5000);
    }

    #[test]
    fn bad_uris_are_refused() {
        assert!(AmqpUri::parse("http://h").is_err());
        assert!(AmqpUri::parse("amqpx://h").is_err());
        assert!(AmqpUri::parse("amqp://h:notaport").is_err());
        assert!(AmqpUri::parse("amqp://h/%zz").is_err());
    }
}
