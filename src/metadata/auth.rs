//! Users and SASL: PLAIN and AMQPLAIN, with RabbitMQ's rule that `guest`
//! may only connect from a loopback address. Passwords are kept as
//! RabbitMQ keeps them, salted and hashed (`metadata::password`), so users
//! exported from RabbitMQ log in with their passwords; permissions are
//! kept per user for the one vhost, "/".
//!
//! Users are fixed when the broker starts (from the definitions file, an
//! imported file, or the defaults) and shared read-only by every shard.

use std::collections::HashMap;
use std::net::IpAddr;

use bytes::Bytes;

use crate::metadata::password::{HashingAlgorithm, PasswordHash};
use warren_protocol::{FieldTable, FieldValue};

/// RabbitMQ's `loopback_users` default: the users that may only connect
/// from a loopback address.
const LOOPBACK_USERS: &[&str] = &["guest"];

/// A user's configure, write and read patterns on a vhost, as RabbitMQ
/// stores them. Kept and written back; warren does not match resources
/// against them yet (see README), only requires that a user has them to
/// open the vhost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Permission {
    pub(crate) configure: String,
    pub(crate) write: String,
    pub(crate) read: String,
}

impl Permission {
    /// ".*" for everything, as RabbitMQ gives guest and the default user.
    pub(crate) fn full() -> Permission {
        Permission {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    /// None for a user without a password, who cannot log in with one (as
    /// RabbitMQ allows for users who authenticate otherwise).
    pub(crate) password: Option<PasswordHash>,
    pub(crate) tags: Vec<String>,
    /// Permissions on "/", the only vhost; None means no access.
    pub(crate) permission: Option<Permission>,
    loopback_only: bool,
}

impl User {
    pub(crate) fn new(
        name: String,
        password: Option<PasswordHash>,
        tags: Vec<String>,
        permission: Option<Permission>,
    ) -> User {
        let loopback_only = LOOPBACK_USERS.contains(&name.as_str());
        User {
            name,
            password,
            tags,
            permission,
            loopback_only,
        }
    }

    /// A user as RabbitMQ creates its default user: administrator, with
    /// every permission on "/".
    pub(crate) fn administrator(name: &str, password: &str) -> User {
        User::new(
            name.to_string(),
            Some(PasswordHash::new(HashingAlgorithm::Sha256, password)),
            vec!["administrator".to_string()],
            Some(Permission::full()),
        )
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Users {
    users: HashMap<String, User>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
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
    /// EXTERNAL found no user to log in as; the reason is
    /// rabbitmq_auth_mechanism_ssl's.
    External {
        reason: &'static str,
    },
}

pub(crate) const MECHANISMS: &str = "PLAIN AMQPLAIN";
/// On a TLS connection: rabbitmq_auth_mechanism_ssl offers EXTERNAL on
/// every TLS connection, certificate or not ("that leads to a more
/// comprehensible error message"), and refuses it below when there is none.
pub(crate) const MECHANISMS_TLS: &str = "PLAIN AMQPLAIN EXTERNAL";

/// What the EXTERNAL mechanism has to go on for one connection: the user
/// name its TLS client certificate gives (`ssl_cert_login_from`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum External {
    /// Not a TLS connection: EXTERNAL is not offered.
    #[default]
    NotTls,
    /// Peer verification is off, so a certificate proves nothing.
    Unsafe,
    NoCertificate,
    /// The certificate holds no name where the login is taken from.
    NoName,
    User(String),
}

impl External {
    pub(crate) fn mechanisms(&self) -> &'static str {
        match self {
            External::NotTls => MECHANISMS,
            _ => MECHANISMS_TLS,
        }
    }
}

impl Users {
    /// The users of a fresh node: `guest/guest` (loopback only), plus the
    /// configured default user.
    pub(crate) fn new(default_user: Option<(String, String)>) -> Users {
        let mut users = vec![User::administrator("guest", "guest")];
        if let Some((name, password)) = default_user {
            users.push(User::administrator(&name, &password));
        }
        Users::from_users(users)
    }

    /// Exactly these users (a later one of the same name replaces an earlier).
    pub(crate) fn from_users(list: Vec<User>) -> Users {
        Users {
            users: list.into_iter().map(|u| (u.name.clone(), u)).collect(),
        }
    }

    /// Every user, sorted by name (so the definitions file is stable).
    pub(crate) fn sorted(&self) -> Vec<&User> {
        let mut all: Vec<&User> = self.users.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// True if `user` has permissions on "/" (`rabbit_access_control:check_vhost_access`).
    pub(crate) fn may_open_vhost(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.permission.is_some())
    }

    pub(crate) fn authenticate(
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
            Some(user) if user.password.as_ref().is_some_and(|h| h.verify(&password)) => user,
            _ => return Err(AuthFailure::Refused { user: name }),
        };
        if user.loopback_only && !peer.is_loopback() && !is_mapped_loopback(peer) {
            return Err(AuthFailure::LoopbackOnly { user: name });
        }
        Ok(user)
    }
}

impl Users {
    /// EXTERNAL (rabbitmq_auth_mechanism_ssl): the user named by the
    /// client's verified certificate, who must exist; no password is
    /// checked. The loopback-only rule holds as for any login.
    pub(crate) fn authenticate_external(
        &self,
        external: &External,
        peer: IpAddr,
    ) -> Result<&User, AuthFailure> {
        // RabbitMQ's reasons, word for word.
        let reason = match external {
            External::User(name) => {
                let Some(user) = self.users.get(name) else {
                    return Err(AuthFailure::Refused { user: name.clone() });
                };
                if user.loopback_only && !peer.is_loopback() && !is_mapped_loopback(peer) {
                    return Err(AuthFailure::LoopbackOnly { user: name.clone() });
                }
                return Ok(user);
            }
            External::NotTls => return Err(AuthFailure::UnknownMechanism),
            External::Unsafe => "TLS configuration is unsafe",
            External::NoCertificate => "connection has no peer certificate",
            External::NoName => "no name found",
        };
        Err(AuthFailure::External { reason })
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
    fn users_without_a_password_cannot_log_in() {
        let users = Users::from_users(vec![User::new(
            "nopass".into(),
            None,
            vec![],
            Some(Permission::full()),
        )]);
        for response in [&b"\0nopass\0"[..], b"\0nopass\0x"] {
            assert!(users
                .authenticate("PLAIN", &Bytes::copy_from_slice(response), loopback())
                .is_err());
        }
    }

    #[test]
    fn vhost_access_needs_a_permission() {
        let users = Users::from_users(vec![
            User::administrator("admin", "pw"),
            User::new(
                "stranger".into(),
                Some(PasswordHash::new(HashingAlgorithm::Sha256, "pw")),
                vec![],
                None,
            ),
        ]);
        assert!(users.may_open_vhost("admin"));
        assert!(!users.may_open_vhost("stranger"));
        assert!(!users.may_open_vhost("nobody"));
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
