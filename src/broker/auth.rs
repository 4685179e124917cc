//! Users and SASL: PLAIN and AMQPLAIN, with RabbitMQ's rule that `guest`
//! may only connect from a loopback address.

use std::collections::HashMap;
use std::net::IpAddr;

use bytes::Bytes;

use crate::protocol::{FieldTable, FieldValue};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    password: String,
    /// RabbitMQ's `loopback_users`: only `guest` by default.
    loopback_only: bool,
}

#[derive(Clone, Debug)]
pub struct Users {
    users: HashMap<String, User>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password.
    Refused {
        user: String,
    },
    /// A loopback-only user connecting from elsewhere.
    LoopbackOnly {
        user: String,
    },
    /// The response did not parse as the mechanism requires.
    Malformed,
    UnknownMechanism,
}

pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

impl Users {
    /// `guest/guest` (loopback only), plus the configured default user.
    pub fn new(default_user: Option<(String, String)>) -> Users {
        let mut users = HashMap::new();
        users.insert(
            "guest".to_string(),
            User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            },
        );
        if let Some((name, password)) = default_user {
            users.insert(
                name.clone(),
                User {
                    name,
                    password,
                    loopback_only: false,
                },
            );
        }
        Users { users }
    }

    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &Bytes,
        peer: IpAddr,
    ) -> Result<&User, AuthFailure> {
        let (name, password) = match mechanism {
            "PLAIN" => parse_plain(response)?,
            "AMQPLAIN" => parse_amqplain(response)?,
            _ => return Err(AuthFailure::UnknownMechanism),
        };
        let user = match self.users.get(&name) {
            Some(user) if user.password == password => user,
            _ => return Err(AuthFailure::Refused { user: name }),
        };
        if user.loopback_only && !peer.is_loopback() && !is_mapped_loopback(peer) {
            return Err(AuthFailure::LoopbackOnly { user: name });
        }
        Ok(user)
    }
}

fn is_mapped_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
fn parse_plain(response: &[u8]) -> Result<(String, String), AuthFailure> {
    let mut parts = response.split(|&b| b == 0);
    let (Some(_authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthFailure::Malformed);
    };
    let user = std::str::from_utf8(user).map_err(|_| AuthFailure::Malformed)?;
    let password = std::str::from_utf8(password).map_err(|_| AuthFailure::Malformed)?;
    Ok((user.to_string(), password.to_string()))
}

/// AMQPLAIN: a field table (without its length prefix) with LOGIN and PASSWORD.
fn parse_amqplain(response: &Bytes) -> Result<(String, String), AuthFailure> {
    let table = FieldTable::decode(response).map_err(|_| AuthFailure::Malformed)?;
    let field = |key: &str| -> Result<String, AuthFailure> {
        match table.get(key) {
            Some(FieldValue::LongStr(s)) => std::str::from_utf8(s)
                .map(str::to_string)
                .map_err(|_| AuthFailure::Malformed),
            _ => Err(AuthFailure::Malformed),
        }
    };
    Ok((field("LOGIN")?, field("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn plain_accepts_the_right_password_only() {
        let users = Users::new(Some(("admin".into(), "secret".into())));
        let ok = Bytes::from_static(b"\0admin\0secret");
        let bad = Bytes::from_static(b"\0admin\0nope");
        assert_eq!(
            users.authenticate("PLAIN", &ok, loopback()).unwrap().name,
            "admin"
        );
        assert!(users.authenticate("PLAIN", &bad, loopback()).is_err());
        assert_eq!(
            users.authenticate("PLAIN", &Bytes::from_static(b"admin"), loopback()),
            Err(AuthFailure::Malformed)
        );
    }

    #[test]
    fn guest_is_loopback_only() {
        let users = Users::new(None);
        let guest = Bytes::from_static(b"\0guest\0guest");
        assert!(users.authenticate("PLAIN", &guest, loopback()).is_ok());
        assert_eq!(
            users.authenticate("PLAIN", &guest, IpAddr::from([10, 0, 0, 1])),
            Err(AuthFailure::LoopbackOnly {
                user: "guest".into()
            })
        );
    }
}
