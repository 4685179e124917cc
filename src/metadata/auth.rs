//! The access-control database, as RabbitMQ's internal backend keeps it:
//! users (tags, salted password hashes from `metadata::password`, limits),
//! the virtual hosts (with their limits), each user's configure, write and
//! read patterns per vhost, and topic permissions per vhost and exchange.
//! SASL PLAIN and AMQPLAIN log users in, with RabbitMQ's rule that `guest`
//! may only connect from a loopback address.
//!
//! The checks follow RabbitMQ's access-control table and texts
//! (`rabbit_access_control`, `rabbit_auth_backend_internal`): a pattern is
//! an unanchored regular expression, "" means "^$", the default exchange
//! is checked as `amq.default`. Patterns are compiled once, when set, with
//! the `regex` crate (linear time, bounded size).
//!
//! Every shard holds an identical copy (`Users`), changed only by the
//! metadata owner through `AccessChange`s applied everywhere in the same
//! order; `generation` tells a channel when its cached checks are stale.
//! Plain data and pure functions: no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::metadata::password::{HashingAlgorithm, PasswordHash};
use crate::metadata::policy::Policy;
use warren_protocol::{AmqpError, FieldTable, FieldValue};

/// RabbitMQ's `loopback_users` default: the users that may only connect
/// from a loopback address.
const LOOPBACK_USERS: &[&str] = &["guest"];

/// Compiled size bound of one permission pattern: a pattern that needs
/// more is refused (it matches nothing), so that no user's pattern costs
/// unbounded memory or time.
const PATTERN_SIZE_MAX: usize = 1 << 20;

/// One permission pattern: the text as set, and its compiled form (None
/// when the text does not compile, which then matches nothing, as a
/// pattern RabbitMQ could not run grants nothing).
#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    source: String,
    regex: Option<regex::Regex>,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Pattern {}

impl Pattern {
    pub(crate) fn new(source: &str) -> Pattern {
        Pattern {
            source: source.to_string(),
            regex: compile(source),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// True if the pattern is a valid expression.
    pub(crate) fn is_valid(&self) -> bool {
        self.regex.is_some()
    }

    /// `re:run(Name, Pattern)` as RabbitMQ runs it: a search anywhere in
    /// the name, "" standing for "^$".
    pub(crate) fn matches(&self, name: &str) -> bool {
        self.regex.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// Compiles a RabbitMQ permission pattern ("" is "^$").
pub(crate) fn compile(source: &str) -> Option<regex::Regex> {
    let source = if source.is_empty() { "^$" } else { source };
    regex::RegexBuilder::new(source)
        .size_limit(PATTERN_SIZE_MAX)
        .dfa_size_limit(PATTERN_SIZE_MAX)
        .build()
        .ok()
}

/// A user's configure, write and read patterns on a vhost, as RabbitMQ
/// stores them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Permission {
    pub(crate) configure: Pattern,
    pub(crate) write: Pattern,
    pub(crate) read: Pattern,
}

impl Permission {
    pub(crate) fn new(configure: &str, write: &str, read: &str) -> Permission {
        Permission {
            configure: Pattern::new(configure),
            write: Pattern::new(write),
            read: Pattern::new(read),
        }
    }

    /// ".*" for everything, as RabbitMQ gives guest and the default user.
    pub(crate) fn full() -> Permission {
        Permission::new(".*", ".*", ".*")
    }

    fn pattern(&self, access: Access) -> &Pattern {
        match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        }
    }
}

/// A user's write and read patterns on the routing keys of one topic
/// exchange of a vhost. The patterns may hold `{username}`, `{vhost}` and
/// `{client_id}`, expanded when a connection checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopicPermission {
    pub(crate) vhost: String,
    pub(crate) exchange: String,
    pub(crate) write: String,
    pub(crate) read: String,
}

/// Per-user limits (`rabbitmqctl set_user_limits`); None is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UserLimits {
    pub(crate) max_connections: Option<u64>,
    pub(crate) max_channels: Option<u64>,
}

/// Per-vhost limits (`rabbitmqctl set_vhost_limits`); None is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct VhostLimits {
    pub(crate) max_connections: Option<u64>,
    pub(crate) max_queues: Option<u64>,
}

/// A virtual host as the access-control database knows it. Its exchanges,
/// queues and bindings are in the broker's replicas (`broker::vhost`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VhostDef {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) tags: Vec<String>,
    pub(crate) limits: VhostLimits,
    /// The firehose tracer's switch for this vhost (`rabbitmqctl trace_on`,
    /// the management API's `"tracing": true`). Every shard's copy has it,
    /// so a shard reads it from its own `Users` without asking anyone. As
    /// in RabbitMQ it is not kept across a restart.
    pub(crate) tracing: bool,
    /// Its policies by name (`metadata::policy`).
    pub(crate) policies: BTreeMap<String, Policy>,
}

impl VhostDef {
    pub(crate) fn new(name: &str) -> VhostDef {
        VhostDef {
            name: name.to_string(),
            description: String::new(),
            tags: Vec::new(),
            limits: VhostLimits::default(),
            tracing: false,
            policies: BTreeMap::new(),
        }
    }

    /// "/" as RabbitMQ creates it on a fresh node.
    pub(crate) fn default_vhost() -> VhostDef {
        VhostDef {
            description: "Default virtual host".to_string(),
            ..VhostDef::new(crate::metadata::vhost::DEFAULT_VHOST)
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
    /// Permissions by vhost; a vhost missing here is no access.
    pub(crate) permissions: BTreeMap<String, Permission>,
    pub(crate) topic_permissions: Vec<TopicPermission>,
    pub(crate) limits: UserLimits,
    loopback_only: bool,
}

impl User {
    pub(crate) fn new(
        name: String,
        password: Option<PasswordHash>,
        tags: Vec<String>,
        permissions: BTreeMap<String, Permission>,
    ) -> User {
        let loopback_only = LOOPBACK_USERS.contains(&name.as_str());
        User {
            name,
            password,
            tags,
            permissions,
            topic_permissions: Vec::new(),
            limits: UserLimits::default(),
            loopback_only,
        }
    }

    /// A user as RabbitMQ creates its default user: administrator, with
    /// every permission on "/".
    pub(crate) fn administrator(name: &str, password: &str) -> User {
        let mut permissions = BTreeMap::new();
        permissions.insert(
            crate::metadata::vhost::DEFAULT_VHOST.to_string(),
            Permission::full(),
        );
        User::new(
            name.to_string(),
            Some(PasswordHash::new(HashingAlgorithm::Sha256, password)),
            vec!["administrator".to_string()],
            permissions,
        )
    }

    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// What a resource check is for (`rabbit_types:permission_atom()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Configure,
    Write,
    Read,
}

/// A change to the access-control database, made by the metadata owner
/// and applied by every shard to its copy. The control plane (the
/// management API) makes them at run time through
/// `broker::metadata::MetaRequest::Access`; until it is wired, only tests
/// construct most of them.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub(crate) enum AccessChange {
    VhostAdded(VhostDef),
    /// An existing vhost's description, tags and tracing switch changed
    /// (its limits are kept), as a management API PUT on it does.
    VhostUpdated(VhostDef),
    VhostDeleted(String),
    /// A user added, or replaced as given (password, tags, permissions).
    UserPut(User),
    /// `rabbit_auth_backend_internal:put_user`, as the management API's
    /// PUT does: a new user is added as given; an existing one gets the
    /// tags and the password given (none when none is given: it can no
    /// longer log in with a password), and keeps its permissions, topic
    /// permissions and limits.
    UserUpdated(User),
    UserDeleted(String),
    PermissionSet {
        user: String,
        vhost: String,
        permission: Permission,
    },
    PermissionCleared {
        user: String,
        vhost: String,
    },
    TopicPermissionSet {
        user: String,
        permission: TopicPermission,
    },
    TopicPermissionCleared {
        user: String,
        vhost: String,
        exchange: String,
    },
    VhostLimitsSet {
        vhost: String,
        limits: VhostLimits,
    },
    UserLimitsSet {
        user: String,
        limits: UserLimits,
    },
    /// A policy added, or replaced by name in its vhost.
    PolicySet(Box<Policy>),
    PolicyCleared {
        vhost: String,
        name: String,
    },
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Users {
    users: HashMap<String, User>,
    vhosts: BTreeMap<String, VhostDef>,
    /// Changes applied so far: a check a channel cached at one generation
    /// holds until the next change.
    generation: u64,
    /// The node's open connections and channels, counted for the limits:
    /// one counter for the node, shared by every shard's copy.
    usage: Arc<Usage>,
}

/// Open connections per vhost and per user, and open channels per user,
/// across the node. Touched when a connection or channel opens or closes,
/// never per message: a lock is cheaper than a protocol between shards
/// for something this rare.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    counts: Mutex<UsageCounts>,
}

#[derive(Debug, Default)]
struct UsageCounts {
    vhost_connections: HashMap<String, u64>,
    user_connections: HashMap<String, u64>,
    user_channels: HashMap<String, u64>,
}

impl Usage {
    fn counts(&self) -> std::sync::MutexGuard<'_, UsageCounts> {
        // A panic elsewhere while counting leaves counts, not a broken
        // invariant: carry on with them.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection of `user` to `vhost`, unless a limit is reached
    /// (rabbit_reader's `is_over_vhost_connection_limit`, then
    /// `is_over_user_connection_limit`): then the refusal.
    pub(crate) fn open_connection(
        &self,
        vhost: &str,
        user: &str,
        vhost_max: Option<u64>,
        user_max: Option<u64>,
    ) -> Result<(), AmqpError> {
        let mut counts = self.counts();
        let in_vhost = counts.vhost_connections.get(vhost).copied().unwrap_or(0);
        if let Some(max) = vhost_max.filter(|&max| in_vhost >= max) {
            return Err(AmqpError::not_allowed(format!(
                "access to vhost '{}' refused for user '{}': connection limit ({}) is reached",
                vhost, user, max
            )));
        }
        let of_user = counts.user_connections.get(user).copied().unwrap_or(0);
        if let Some(max) = user_max.filter(|&max| of_user >= max) {
            return Err(AmqpError::not_allowed(format!(
                "connection refused for user '{}': user connection limit ({}) is reached",
                user, max
            )));
        }
        *counts
            .vhost_connections
            .entry(vhost.to_string())
            .or_default() += 1;
        *counts.user_connections.entry(user.to_string()).or_default() += 1;
        Ok(())
    }

    pub(crate) fn close_connection(&self, vhost: &str, user: &str) {
        let mut counts = self.counts();
        decrement(&mut counts.vhost_connections, vhost);
        decrement(&mut counts.user_connections, user);
    }

    /// Counts a channel of `user`, unless the user's max-channels is
    /// reached (`rabbit_reader`'s check when it creates a channel).
    pub(crate) fn open_channel(&self, user: &str, user_max: Option<u64>) -> Result<(), AmqpError> {
        let mut counts = self.counts();
        let open = counts.user_channels.get(user).copied().unwrap_or(0);
        if let Some(max) = user_max.filter(|&max| open >= max) {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened for user '{}' has reached the maximum allowed \
                 user limit of ({})",
                user, max
            )));
        }
        *counts.user_channels.entry(user.to_string()).or_default() += 1;
        Ok(())
    }

    pub(crate) fn close_channels(&self, user: &str, count: u64) {
        let mut counts = self.counts();
        if let Some(n) = counts.user_channels.get_mut(user) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                counts.user_channels.remove(user);
            }
        }
    }
}

fn decrement(map: &mut HashMap<String, u64>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
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
    /// configured default user, and the vhost "/".
    pub(crate) fn new(default_user: Option<(String, String)>) -> Users {
        let mut users = vec![User::administrator("guest", "guest")];
        if let Some((name, password)) = default_user {
            users.push(User::administrator(&name, &password));
        }
        Users::from_users(users)
    }

    /// Exactly these users (a later one of the same name replaces an
    /// earlier), and the vhost "/".
    pub(crate) fn from_users(list: Vec<User>) -> Users {
        Users::from_parts(list, vec![VhostDef::default_vhost()])
    }

    /// Exactly these users and vhosts.
    pub(crate) fn from_parts(users: Vec<User>, vhosts: Vec<VhostDef>) -> Users {
        Users {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            vhosts: vhosts.into_iter().map(|v| (v.name.clone(), v)).collect(),
            generation: 0,
            usage: Arc::default(),
        }
    }

    /// The node's connection and channel counts.
    pub(crate) fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// Every user, sorted by name (so the definitions file is stable).
    pub(crate) fn sorted(&self) -> Vec<&User> {
        let mut all: Vec<&User> = self.users.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Every vhost, sorted by name.
    pub(crate) fn vhosts(&self) -> impl Iterator<Item = &VhostDef> {
        self.vhosts.values()
    }

    pub(crate) fn vhost(&self, name: &str) -> Option<&VhostDef> {
        self.vhosts.get(name)
    }

    /// Whether the firehose tracer is on for `vhost` (false for a vhost
    /// that does not exist): what the tracer reads, on its own shard.
    #[allow(dead_code)] // The firehose tracer (built separately) reads it.
    pub(crate) fn tracing(&self, vhost: &str) -> bool {
        self.vhosts.get(vhost).is_some_and(|v| v.tracing)
    }

    /// The policies of `vhost` (none for a vhost that does not exist).
    pub(crate) fn policies(&self, vhost: &str) -> impl Iterator<Item = &Policy> + Clone {
        self.vhosts
            .get(vhost)
            .into_iter()
            .flat_map(|v| v.policies.values())
    }

    pub(crate) fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// How many changes this copy has applied.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// True if `user` has permissions on `vhost`
    /// (`rabbit_access_control:check_vhost_access`).
    pub(crate) fn may_open_vhost(&self, user: &str, vhost: &str) -> bool {
        self.vhosts.contains_key(vhost)
            && self
                .users
                .get(user)
                .is_some_and(|u| u.permissions.contains_key(vhost))
    }

    /// `rabbit_access_control:check_resource_access`: 403 ACCESS_REFUSED
    /// unless `user`'s pattern for `access` on `vhost` matches `name`.
    /// `kind` is "exchange" or "queue"; the default exchange is checked,
    /// and named, as `amq.default`.
    pub(crate) fn check_resource(
        &self,
        user: &str,
        vhost: &str,
        kind: &str,
        name: &str,
        access: Access,
    ) -> Result<(), AmqpError> {
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let allowed = self
            .users
            .get(user)
            .and_then(|u| u.permissions.get(vhost))
            .is_some_and(|p| p.pattern(access).matches(name));
        if allowed {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "access to {} '{}' in vhost '{}' refused for user '{}'",
            kind, name, vhost, user
        )))
    }

    /// The topic pattern `user` has for `access` on `exchange` in `vhost`,
    /// with `{username}`, `{vhost}` and `{client_id}` expanded and
    /// compiled; None when the user has no topic permission there (which
    /// RabbitMQ's internal backend reads as allowed). `Some(None)` is a
    /// pattern that does not compile, which allows nothing.
    pub(crate) fn topic_pattern(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
        access: Access,
        client_id: Option<&str>,
    ) -> Option<Option<regex::Regex>> {
        let permission = self
            .users
            .get(user)?
            .topic_permissions
            .iter()
            .find(|t| t.vhost == vhost && t.exchange == exchange)?;
        let source = match access {
            Access::Write => &permission.write,
            _ => &permission.read,
        };
        let expanded = expand_topic_variables(source, user, vhost, client_id);
        Some(compile(&expanded))
    }

    /// Applies a change made by the metadata owner.
    pub(crate) fn apply(&mut self, change: &AccessChange) {
        self.generation += 1;
        match change {
            AccessChange::VhostAdded(def) => {
                self.vhosts.insert(def.name.clone(), def.clone());
            }
            AccessChange::VhostUpdated(def) => {
                if let Some(v) = self.vhosts.get_mut(&def.name) {
                    v.description = def.description.clone();
                    v.tags = def.tags.clone();
                    v.tracing = def.tracing;
                }
            }
            AccessChange::VhostDeleted(name) => {
                self.vhosts.remove(name);
                for user in self.users.values_mut() {
                    user.permissions.remove(name);
                    user.topic_permissions.retain(|t| &t.vhost != name);
                }
            }
            AccessChange::UserPut(user) => {
                self.users.insert(user.name.clone(), user.clone());
            }
            AccessChange::UserUpdated(user) => match self.users.get_mut(&user.name) {
                Some(existing) => {
                    existing.tags = user.tags.clone();
                    existing.password = user.password.clone();
                }
                None => {
                    self.users.insert(user.name.clone(), user.clone());
                }
            },
            AccessChange::UserDeleted(name) => {
                self.users.remove(name);
            }
            AccessChange::PermissionSet {
                user,
                vhost,
                permission,
            } => {
                if let Some(u) = self.users.get_mut(user) {
                    u.permissions.insert(vhost.clone(), permission.clone());
                }
            }
            AccessChange::PermissionCleared { user, vhost } => {
                if let Some(u) = self.users.get_mut(user) {
                    u.permissions.remove(vhost);
                }
            }
            AccessChange::TopicPermissionSet { user, permission } => {
                if let Some(u) = self.users.get_mut(user) {
                    u.topic_permissions.retain(|t| {
                        !(t.vhost == permission.vhost && t.exchange == permission.exchange)
                    });
                    u.topic_permissions.push(permission.clone());
                }
            }
            AccessChange::TopicPermissionCleared {
                user,
                vhost,
                exchange,
            } => {
                if let Some(u) = self.users.get_mut(user) {
                    u.topic_permissions
                        .retain(|t| !(&t.vhost == vhost && &t.exchange == exchange));
                }
            }
            AccessChange::VhostLimitsSet { vhost, limits } => {
                if let Some(v) = self.vhosts.get_mut(vhost) {
                    v.limits = *limits;
                }
            }
            AccessChange::UserLimitsSet { user, limits } => {
                if let Some(u) = self.users.get_mut(user) {
                    u.limits = *limits;
                }
            }
            AccessChange::PolicySet(policy) => {
                if let Some(v) = self.vhosts.get_mut(&policy.vhost) {
                    v.policies
                        .insert(policy.name.clone(), policy.as_ref().clone());
                }
            }
            AccessChange::PolicyCleared { vhost, name } => {
                if let Some(v) = self.vhosts.get_mut(vhost) {
                    v.policies.remove(name);
                }
            }
        }
    }

    /// Why the metadata owner refuses `change`, if it does: what
    /// `rabbitmqctl` reports for the same command.
    pub(crate) fn refusal(&self, change: &AccessChange) -> Option<String> {
        let no_vhost =
            |v: &str| (!self.vhosts.contains_key(v)).then(|| format!("no_such_vhost: {}", v));
        let no_user =
            |u: &str| (!self.users.contains_key(u)).then(|| format!("no_such_user: {}", u));
        let bad_pattern = |p: &Pattern| {
            (!p.is_valid()).then(|| format!("invalid regular expression '{}'", p.as_str()))
        };
        match change {
            AccessChange::VhostAdded(def) => self
                .vhosts
                .contains_key(&def.name)
                .then(|| format!("vhost_already_exists: {}", def.name)),
            AccessChange::VhostUpdated(def) => no_vhost(&def.name),
            AccessChange::VhostDeleted(name) => no_vhost(name),
            AccessChange::UserPut(_) | AccessChange::UserUpdated(_) => None,
            AccessChange::UserDeleted(name) => no_user(name),
            AccessChange::PermissionSet {
                user,
                vhost,
                permission,
            } => no_user(user)
                .or_else(|| no_vhost(vhost))
                .or_else(|| bad_pattern(&permission.configure))
                .or_else(|| bad_pattern(&permission.write))
                .or_else(|| bad_pattern(&permission.read)),
            AccessChange::PermissionCleared { user, vhost } => {
                no_user(user).or_else(|| no_vhost(vhost))
            }
            AccessChange::TopicPermissionSet { user, permission } => no_user(user)
                .or_else(|| no_vhost(&permission.vhost))
                .or_else(|| bad_pattern(&Pattern::new(&permission.write)))
                .or_else(|| bad_pattern(&Pattern::new(&permission.read))),
            AccessChange::TopicPermissionCleared { user, vhost, .. } => {
                no_user(user).or_else(|| no_vhost(vhost))
            }
            AccessChange::VhostLimitsSet { vhost, .. } => no_vhost(vhost),
            AccessChange::UserLimitsSet { user, .. } => no_user(user),
            AccessChange::PolicySet(policy) => no_vhost(&policy.vhost),
            AccessChange::PolicyCleared { vhost, name } => no_vhost(vhost).or_else(|| {
                self.vhosts
                    .get(vhost)
                    .is_some_and(|v| !v.policies.contains_key(name))
                    .then(|| format!("no_such_policy: {}", name))
            }),
        }
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

/// RabbitMQ's topic permission variables, each replaced by its value
/// escaped for a regular expression (`{client_id}` by nothing when the
/// connection gave none).
pub(crate) fn expand_topic_variables(
    pattern: &str,
    user: &str,
    vhost: &str,
    client_id: Option<&str>,
) -> String {
    pattern
        .replace("{username}", &regex::escape(user))
        .replace("{vhost}", &regex::escape(vhost))
        .replace("{client_id}", &regex::escape(client_id.unwrap_or("")))
}

/// `rabbit_channel:check_user_id_header`: a publish's `user_id` property: it must name the connection's user,
/// unless the user is an impersonator.
pub(crate) fn check_user_id(
    user: Option<&User>,
    name: &str,
    user_id: &str,
) -> Result<(), AmqpError> {
    if user_id == name || user.is_some_and(|u| u.has_tag("impersonator")) {
        return Ok(());
    }
    Err(AmqpError::precondition_failed(format!(
        "user_id property set to '{}' but authenticated user was '{}'",
        user_id, name
    )))
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

    fn full_on_default() -> BTreeMap<String, Permission> {
        BTreeMap::from([("/".to_string(), Permission::full())])
    }

    fn user_with(vhost: &str, permission: Permission) -> Users {
        let mut users = Users::from_parts(
            vec![User::new("u".into(), None, vec![], BTreeMap::new())],
            vec![VhostDef::default_vhost(), VhostDef::new("v")],
        );
        users.apply(&AccessChange::PermissionSet {
            user: "u".into(),
            vhost: vhost.into(),
            permission,
        });
        users
    }

    #[test]
    fn patterns_match_as_rabbitmq_runs_them() {
        let users = user_with("v", Permission::new("^conf-", "", "amq\\.gen|^r$"));
        let check = |kind, name, access| users.check_resource("u", "v", kind, name, access);
        assert!(check("queue", "conf-1", Access::Configure).is_ok());
        // Unanchored: a match anywhere counts.
        assert!(check("queue", "x.amq.gen-abc", Access::Read).is_ok());
        assert!(check("queue", "r", Access::Read).is_ok());
        // "" is "^$": it matches only the empty name, and the default
        // exchange is checked as amq.default.
        let refused = check("exchange", "", Access::Write).unwrap_err();
        assert_eq!(
            refused.text,
            "access to exchange 'amq.default' in vhost 'v' refused for user 'u'"
        );
        assert_eq!(refused.code, warren_protocol::ReplyCode::AccessRefused);
        assert!(check("queue", "other", Access::Configure).is_err());
        // No permission on "/" at all.
        assert!(users
            .check_resource("u", "/", "queue", "conf-1", Access::Configure)
            .is_err());
    }

    #[test]
    fn an_invalid_pattern_grants_nothing_and_is_refused_when_set() {
        let users = user_with("v", Permission::new("(", ".*", ".*"));
        assert!(users
            .check_resource("u", "v", "queue", "(", Access::Configure)
            .is_err());
        let change = AccessChange::PermissionSet {
            user: "u".into(),
            vhost: "v".into(),
            permission: Permission::new("(", ".*", ".*"),
        };
        assert!(users.refusal(&change).is_some());
    }

    #[test]
    fn topic_patterns_expand_their_variables_escaped() {
        let mut users = user_with("v", Permission::full());
        users.apply(&AccessChange::TopicPermissionSet {
            user: "u".into(),
            permission: TopicPermission {
                vhost: "v".into(),
                exchange: "amq.topic".into(),
                write: "^{username}\\.{client_id}\\.".into(),
                read: "^{vhost}$".into(),
            },
        });
        let write = users
            .topic_pattern("u", "v", "amq.topic", Access::Write, Some("c.1"))
            .unwrap()
            .unwrap();
        assert!(write.is_match("u.c.1.x"));
        // The client id's dot is literal.
        assert!(!write.is_match("u.cx1.x"));
        let read = users
            .topic_pattern("u", "v", "amq.topic", Access::Read, None)
            .unwrap()
            .unwrap();
        assert!(read.is_match("v"));
        assert!(users
            .topic_pattern("u", "v", "other", Access::Write, None)
            .is_none());
    }

    #[test]
    fn deleting_a_vhost_drops_its_permissions() {
        let mut users = user_with("v", Permission::full());
        assert!(users.may_open_vhost("u", "v"));
        let before = users.generation();
        users.apply(&AccessChange::VhostDeleted("v".into()));
        assert!(!users.may_open_vhost("u", "v"));
        assert!(users.user("u").unwrap().permissions.is_empty());
        assert!(users.generation() > before);
    }

    #[test]
    fn user_id_must_name_the_user_unless_impersonating() {
        assert!(check_user_id(None, "u", "u").is_ok());
        let refused = check_user_id(None, "u", "other").unwrap_err();
        assert_eq!(
            refused.text,
            "user_id property set to 'other' but authenticated user was 'u'"
        );
        let mut impersonator = User::administrator("i", "pw");
        impersonator.tags.push("impersonator".into());
        assert!(check_user_id(Some(&impersonator), "i", "other").is_ok());
    }

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
            full_on_default(),
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
                BTreeMap::new(),
            ),
        ]);
        assert!(users.may_open_vhost("admin", "/"));
        assert!(!users.may_open_vhost("admin", "other"));
        assert!(!users.may_open_vhost("stranger", "/"));
        assert!(!users.may_open_vhost("nobody", "/"));
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
