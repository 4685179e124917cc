//! Definitions in RabbitMQ's JSON format: what `rabbitmqctl
//! export_definitions` writes and `import_definitions` (or
//! `load_definitions` at boot) reads. warren keeps its durable definitions
//! in this format (`<data-dir>/definitions.json`, written by the metadata
//! owner through `store::definitions`) and imports RabbitMQ exports with
//! `--definitions FILE`. This module converts between the JSON and warren's
//! own types and plans the restore at start; it performs no I/O.
//!
//! ```text
//! {
//!   "bindings":    [{"arguments": {}, "destination": "q", "destination_type": "queue",
//!                    "routing_key": "k", "source": "x", "vhost": "/"}],
//!   "exchanges":   [{"arguments": {}, "auto_delete": false, "durable": true,
//!                    "internal": false, "name": "x", "type": "direct", "vhost": "/"}],
//!   "global_parameters": [], "parameters": [], "policies": [], "topic_permissions": [],
//!   "permissions": [{"configure": ".*", "read": ".*", "user": "u", "vhost": "/", "write": ".*"}],
//!   "product_name": "warren", "product_version": "0.1.0",
//!   "queues":      [{"arguments": {"x-message-ttl": 60000}, "auto_delete": false,
//!                    "durable": true, "name": "q", "type": "classic", "vhost": "/"}],
//!   "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",
//!   "users":       [{"hashing_algorithm": "rabbit_password_hashing_sha256", "limits": {},
//!                    "name": "u", "password_hash": "<base64>", "tags": ["administrator"]}],
//!   "vhosts":      [{"limits": [], "metadata": {"description": "Default virtual host",
//!                    "tags": []}, "name": "/"}]
//! }
//! ```
//!
//! Keys are written in sorted order, as RabbitMQ 3.10 writes them. Where
//! warren's file differs from an export, RabbitMQ's import still reads it:
//!
//! - Internal exchanges are written with `"internal": true` (RabbitMQ's
//!   export leaves internal exchanges out; its import reads the key).
//! - Arguments are JSON values, so their AMQP types are lost (an integer
//!   comes back as a `long`, as after a RabbitMQ export and import). When
//!   that would change a value (a `signedint` binding argument that a
//!   headers exchange compares with the message's `signedint` header), the
//!   object also carries `"warren_typed_arguments"`: the exact field table,
//!   AMQP-encoded, in base64. It is used only while it still agrees with
//!   `arguments`, so editing `arguments` by hand wins; RabbitMQ ignores it.
//!
//! Import follows `rabbit_definitions`: JSON integers become `long`
//! arguments, other numbers `double`; exchanges named "" or "amq.*" and
//! queues named "amq.*" are skipped with a warning (for an import; warren's
//! own file restores its durable server-named queues); a binding whose
//! source or destination is missing is skipped with a warning (RabbitMQ
//! ignores it silently). Every vhost of the file is kept, with its
//! exchanges, queues, bindings and limits, and so are permissions, topic
//! permissions, user limits and policies. Runtime parameters are not
//! supported yet and are skipped with a warning. An unknown exchange type, a queue warren
//! cannot create (a stream, an invalid argument), a password hash that
//! is not one RabbitMQ could have made, or a permission for a missing user
//! is an error: the broker refuses to start and says which definition.

use bytes::{Bytes, BytesMut};

use std::collections::BTreeMap;

use crate::metadata::auth::{
    Permission, TopicPermission, User, UserLimits, Users, VhostDef, VhostLimits,
};
use crate::metadata::exchange::{
    self, Binding, Destination, ExchangeDef, ExchangeKind, MatchMode, DELAYED_TYPE,
};
use crate::metadata::password::{base64_decode, base64_encode, HashingAlgorithm, PasswordHash};
use crate::metadata::policy::{ApplyTo, Policy};
use crate::metadata::queue_args::{check_queue_type_flags, QueueArgs};
use crate::metadata::vhost::{Catalog, DefinitionsView, MetaChange, QueueMeta, DEFAULT_VHOST};
use crate::model::ids::{QueueId, ShardId};
use crate::util::json::{self, Json};
use warren_protocol::{FieldTable, FieldValue, ShortStr};

/// The RabbitMQ release whose behaviour (and definitions format) warren follows.
pub(crate) const RABBITMQ_VERSION: &str = "3.10.8";

/// The member holding arguments' exact AMQP types (see the module doc).
const TYPED_ARGUMENTS: &str = "warren_typed_arguments";

/// Where definitions come from; the two differ only in what is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// warren's own `<data-dir>/definitions.json`.
    DataDir,
    /// A RabbitMQ export given with `--definitions`.
    Import,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QueueDef {
    pub(crate) name: ShortStr,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: FieldTable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DestinationKind {
    Queue,
    Exchange,
}

impl DestinationKind {
    fn name(self) -> &'static str {
        match self {
            DestinationKind::Queue => "queue",
            DestinationKind::Exchange => "exchange",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BindingDef {
    pub(crate) source: ShortStr,
    pub(crate) destination: ShortStr,
    pub(crate) destination_kind: DestinationKind,
    pub(crate) routing_key: ShortStr,
    pub(crate) arguments: FieldTable,
}

/// Everything in one definitions file that warren keeps. The exchanges,
/// queues and bindings of "/" are at the top (the definitions log, which
/// records changes to "/" only, replays onto them); those of every other
/// vhost are in `others`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Definitions {
    /// Users with their permissions, topic permissions and limits.
    pub(crate) users: Vec<User>,
    /// The vhosts; empty means "/" alone (a file without "vhosts").
    pub(crate) vhosts: Vec<VhostDef>,
    pub(crate) exchanges: Vec<ExchangeDef>,
    pub(crate) queues: Vec<QueueDef>,
    pub(crate) bindings: Vec<BindingDef>,
    pub(crate) others: BTreeMap<String, VhostContents>,
}

/// A vhost's name and its exchanges, queues and bindings, borrowed.
type ContentsOf<'a> = (&'a str, &'a [ExchangeDef], &'a [QueueDef], &'a [BindingDef]);

/// One vhost's exchanges, queues and bindings, as in the file.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct VhostContents {
    pub(crate) exchanges: Vec<ExchangeDef>,
    pub(crate) queues: Vec<QueueDef>,
    pub(crate) bindings: Vec<BindingDef>,
}

/// Definitions read from a file, and what was skipped on the way.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) definitions: Definitions,
    pub(crate) warnings: Vec<String>,
}

/// What every shard applies at start, before it accepts a connection.
#[derive(Debug, Default)]
pub(crate) struct RestorePlan {
    /// Each change with the vhost it applies to.
    pub(crate) changes: Vec<(ShortStr, MetaChange)>,
    /// The metadata owner carries on numbering and placing queues from here.
    pub(crate) next_queue_id: u64,
    pub(crate) next_shard: usize,
    pub(crate) warnings: Vec<String>,
}

impl Definitions {
    /// Reads a definitions document. Errors name the definition at fault.
    pub(crate) fn from_json(text: &str, source: Source) -> Result<Parsed, String> {
        let doc = json::parse(text).map_err(|e| e.to_string())?;
        if doc.as_object().is_none() {
            return Err(format!(
                "the document is {}, expected an object with \"users\", \"queues\", ...",
                doc.kind()
            ));
        }
        let mut reader = Reader {
            source,
            warnings: Vec::new(),
            version: doc
                .get("rabbitmq_version")
                .or_else(|| doc.get("rabbit_version"))
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_string(),
        };
        let mut definitions = Definitions::default();

        for (at, item) in reader.list(&doc, "vhosts")?.iter().enumerate() {
            let vhost = reader.vhost(item, &format!("vhosts[{}]", at))?;
            definitions.vhosts.retain(|v| v.name != vhost.name);
            definitions.vhosts.push(vhost);
        }
        // A file without "vhosts" (an older or hand-written one) holds "/".
        let listed = |defs: &Definitions, name: &str| {
            defs.vhosts.is_empty() && name == DEFAULT_VHOST
                || defs.vhosts.iter().any(|v| v.name == name)
        };
        for (at, item) in reader.list(&doc, "users")?.iter().enumerate() {
            let user = reader.user(item, &format!("users[{}]", at))?;
            definitions.users.retain(|u| u.name != user.name);
            definitions.users.push(user);
        }
        for (at, item) in reader.list(&doc, "permissions")?.iter().enumerate() {
            let ctx = format!("permissions[{}]", at);
            let vhost = vhost_of(item, &ctx)?;
            if !listed(&definitions, &vhost) {
                return Err(format!("{}: no vhost '{}' in this file", ctx, vhost));
            }
            let user = required_str(item, "user", &ctx)?;
            let permission = Permission::new(
                required_str(item, "configure", &ctx)?,
                required_str(item, "write", &ctx)?,
                required_str(item, "read", &ctx)?,
            );
            for pattern in [&permission.configure, &permission.write, &permission.read] {
                if !pattern.is_valid() {
                    return Err(format!(
                        "{}: invalid regular expression '{}'",
                        ctx,
                        pattern.as_str()
                    ));
                }
            }
            match definitions.users.iter_mut().find(|u| u.name == user) {
                Some(u) => {
                    u.permissions.insert(vhost, permission);
                }
                None => {
                    return Err(format!(
                        "{}: no user '{}' in this file for these permissions",
                        ctx, user
                    ))
                }
            }
        }
        for (at, item) in reader.list(&doc, "topic_permissions")?.iter().enumerate() {
            let ctx = format!("topic_permissions[{}]", at);
            let vhost = vhost_of(item, &ctx)?;
            if !listed(&definitions, &vhost) {
                return Err(format!("{}: no vhost '{}' in this file", ctx, vhost));
            }
            let user = required_str(item, "user", &ctx)?;
            let permission = TopicPermission {
                vhost,
                exchange: required_str(item, "exchange", &ctx)?.to_string(),
                write: required_str(item, "write", &ctx)?.to_string(),
                read: required_str(item, "read", &ctx)?.to_string(),
            };
            match definitions.users.iter_mut().find(|u| u.name == user) {
                Some(u) => {
                    u.topic_permissions.retain(|t| {
                        !(t.vhost == permission.vhost && t.exchange == permission.exchange)
                    });
                    u.topic_permissions.push(permission);
                }
                None => {
                    return Err(format!(
                        "{}: no user '{}' in this file for these topic permissions",
                        ctx, user
                    ))
                }
            }
        }
        for (at, item) in reader.list(&doc, "exchanges")?.iter().enumerate() {
            let ctx = format!("exchanges[{}]", at);
            let vhost = vhost_of(item, &ctx)?;
            if let Some(exchange) = reader.exchange(item, &ctx)? {
                let contents = definitions.contents_mut(&vhost);
                contents.0.retain(|x| x.name != exchange.name);
                contents.0.push(exchange);
            }
        }
        for (at, item) in reader.list(&doc, "queues")?.iter().enumerate() {
            let ctx = format!("queues[{}]", at);
            let vhost = vhost_of(item, &ctx)?;
            if let Some(queue) = reader.queue(item, &ctx)? {
                let contents = definitions.contents_mut(&vhost);
                contents.1.retain(|q| q.name != queue.name);
                contents.1.push(queue);
            }
        }
        for (at, item) in reader.list(&doc, "bindings")?.iter().enumerate() {
            let ctx = format!("bindings[{}]", at);
            let vhost = vhost_of(item, &ctx)?;
            if let Some(binding) = reader.binding(item, &ctx)? {
                let contents = definitions.contents_mut(&vhost);
                if !contents.2.contains(&binding) {
                    contents.2.push(binding);
                }
            }
        }
        // Definitions in a vhost the file does not declare: RabbitMQ's
        // import fails on them (the vhost does not exist), so does this.
        let missing: Vec<String> = definitions
            .others
            .keys()
            .filter(|name| !listed(&definitions, name))
            .cloned()
            .collect();
        if let Some(name) = missing.first() {
            return Err(format!(
                "definitions for vhost '{}', which the file does not declare in \"vhosts\"",
                name
            ));
        }
        for (at, item) in reader.list(&doc, "policies")?.iter().enumerate() {
            let ctx = format!("policies[{}]", at);
            let vhost = vhost_of(item, &ctx)?;
            if !listed(&definitions, &vhost) {
                return Err(format!("{}: no vhost '{}' in this file", ctx, vhost));
            }
            // A policy warren cannot apply (one of RabbitMQ's mirroring or
            // federation settings, say) is skipped, not fatal: the rest of
            // an export still loads.
            let policy = match policy_of(item, &vhost, &ctx) {
                Ok(policy) => policy,
                Err(e) => {
                    reader.warnings.push(format!("{}: skipped", e));
                    continue;
                }
            };
            if definitions.vhosts.is_empty() {
                definitions.vhosts.push(VhostDef::default_vhost());
            }
            if let Some(v) = definitions.vhosts.iter_mut().find(|v| v.name == vhost) {
                v.policies.insert(policy.name.clone(), policy);
            }
        }
        for (key, what) in [
            ("parameters", "runtime parameters"),
            ("global_parameters", "global runtime parameters"),
        ] {
            let count = reader.list(&doc, key)?.len();
            if count > 0 {
                reader.warnings.push(format!(
                    "{} {} skipped: warren does not support {} yet",
                    count, what, what
                ));
            }
        }
        Ok(Parsed {
            definitions,
            warnings: reader.warnings,
        })
    }

    /// The file warren writes: RabbitMQ's format, keys sorted, indented.
    pub(crate) fn to_json(&self) -> String {
        let mut users: Vec<&User> = self.users.iter().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        let user_json = users
            .iter()
            .map(|u| {
                let (algorithm, hash) = match &u.password {
                    Some(h) => (h.algorithm, h.to_base64()),
                    // RabbitMQ exports a user without a password this way.
                    None => (HashingAlgorithm::Sha256, String::new()),
                };
                Json::object([
                    (
                        "hashing_algorithm",
                        Json::Str(algorithm.rabbit_name().into()),
                    ),
                    (
                        "limits",
                        limits_json(
                            u.limits.max_connections,
                            u.limits.max_channels,
                            "max-channels",
                        ),
                    ),
                    ("name", Json::Str(u.name.clone())),
                    ("password_hash", Json::Str(hash)),
                    (
                        "tags",
                        Json::Array(u.tags.iter().map(|t| Json::Str(t.clone())).collect()),
                    ),
                ])
            })
            .collect();
        let permissions = users
            .iter()
            .flat_map(|u| {
                u.permissions.iter().map(|(vhost, p)| {
                    Json::object([
                        ("configure", Json::Str(p.configure.as_str().into())),
                        ("read", Json::Str(p.read.as_str().into())),
                        ("user", Json::Str(u.name.clone())),
                        ("vhost", Json::Str(vhost.clone())),
                        ("write", Json::Str(p.write.as_str().into())),
                    ])
                })
            })
            .collect();
        let topic_permissions = users
            .iter()
            .flat_map(|u| {
                u.topic_permissions.iter().map(|t| {
                    Json::object([
                        ("exchange", Json::Str(t.exchange.clone())),
                        ("read", Json::Str(t.read.clone())),
                        ("user", Json::Str(u.name.clone())),
                        ("vhost", Json::Str(t.vhost.clone())),
                        ("write", Json::Str(t.write.clone())),
                    ])
                })
            })
            .collect();
        let mut exchanges = Vec::new();
        let mut queues = Vec::new();
        let mut bindings = Vec::new();
        let top = (
            DEFAULT_VHOST,
            &self.exchanges[..],
            &self.queues[..],
            &self.bindings[..],
        );
        let others = self.others.iter().map(|(name, c)| {
            (
                name.as_str(),
                &c.exchanges[..],
                &c.queues[..],
                &c.bindings[..],
            )
        });
        for (vhost, x, q, b) in std::iter::once(top).chain(others) {
            contents_json(vhost, x, q, b, &mut exchanges, &mut queues, &mut bindings);
        }
        let vhost_list: Vec<VhostDef> = if self.vhosts.is_empty() {
            vec![VhostDef::default_vhost()]
        } else {
            self.vhosts.clone()
        };
        let vhosts = Json::Array(
            vhost_list
                .iter()
                .map(|v| {
                    Json::object([
                        (
                            "limits",
                            limits_json(
                                v.limits.max_connections,
                                v.limits.max_queues,
                                "max-queues",
                            ),
                        ),
                        (
                            "metadata",
                            Json::object([
                                ("description", Json::Str(v.description.clone())),
                                (
                                    "tags",
                                    Json::Array(
                                        v.tags.iter().map(|t| Json::Str(t.clone())).collect(),
                                    ),
                                ),
                            ]),
                        ),
                        ("name", Json::Str(v.name.clone())),
                    ])
                })
                .collect(),
        );
        let policies = vhost_list
            .iter()
            .flat_map(|v| v.policies.values())
            .map(policy_json)
            .collect();
        Json::object([
            ("bindings", Json::Array(bindings)),
            ("exchanges", Json::Array(exchanges)),
            ("global_parameters", Json::Array(vec![])),
            ("parameters", Json::Array(vec![])),
            ("permissions", Json::Array(permissions)),
            ("policies", Json::Array(policies)),
            ("product_name", Json::Str("warren".into())),
            (
                "product_version",
                Json::Str(env!("CARGO_PKG_VERSION").into()),
            ),
            ("queues", Json::Array(queues)),
            ("rabbit_version", Json::Str(RABBITMQ_VERSION.into())),
            ("rabbitmq_version", Json::Str(RABBITMQ_VERSION.into())),
            ("topic_permissions", Json::Array(topic_permissions)),
            ("users", Json::Array(user_json)),
            ("vhosts", vhosts),
        ])
        .to_pretty_string()
    }
}

/// A policy as RabbitMQ exports it (and as the management API lists it).
pub(crate) fn policy_json(p: &Policy) -> Json {
    Json::object([
        ("apply-to", Json::Str(p.apply_to.as_str().into())),
        ("definition", p.definition.clone()),
        ("name", Json::Str(p.name.clone())),
        ("pattern", Json::Str(p.pattern.as_str().into())),
        ("priority", Json::Int(p.priority)),
        ("vhost", Json::Str(p.vhost.clone())),
    ])
}

/// A policy of a file, checked as `rabbit_policy:set` checks it.
fn policy_of(item: &Json, vhost: &str, ctx: &str) -> Result<Policy, String> {
    let name = required_str(item, "name", ctx)?;
    let ctx = format!("{} ('{}')", ctx, name);
    let pattern = required_str(item, "pattern", &ctx)?;
    let apply_to = match optional_str(item, "apply-to", &ctx)? {
        None => ApplyTo::All,
        Some(text) => ApplyTo::parse(text).ok_or_else(|| {
            format!(
                "{}: apply-to '{}' is not one of all, exchanges, queues",
                ctx, text
            )
        })?,
    };
    let priority = match item.get("priority") {
        None | Some(Json::Null) => 0,
        Some(Json::Int(n)) => *n,
        Some(other) => {
            return Err(format!(
                "{}: priority is {}, expected an integer",
                ctx,
                other.kind()
            ))
        }
    };
    let definition = item
        .get("definition")
        .cloned()
        .ok_or_else(|| format!("{}: no \"definition\"", ctx))?;
    Policy::new(vhost, name, pattern, apply_to, priority, definition)
        .map_err(|e| format!("{}: {}", ctx, e))
}

/// A user's or vhost's limits as RabbitMQ exports them: an object of the
/// limits set.
fn limits_json(max_connections: Option<u64>, other: Option<u64>, other_name: &str) -> Json {
    let mut members = Vec::new();
    if let Some(n) = max_connections {
        members.push(("max-connections", Json::Int(n as i64)));
    }
    if let Some(n) = other {
        members.push((other_name, Json::Int(n as i64)));
    }
    Json::object(members)
}

/// Appends one vhost's exchanges, queues and bindings as JSON.
fn contents_json(
    vhost: &str,
    exchange_defs: &[ExchangeDef],
    queue_defs: &[QueueDef],
    binding_defs: &[BindingDef],
    exchanges: &mut Vec<Json>,
    queues: &mut Vec<Json>,
    bindings: &mut Vec<Json>,
) {
    {
        exchanges.extend(exchange_defs.iter().map(|x| {
            with_typed_arguments(
                vec![
                    ("arguments", table_to_json(&x.arguments)),
                    ("auto_delete", Json::Bool(x.auto_delete)),
                    ("durable", Json::Bool(x.durable)),
                    ("internal", Json::Bool(x.internal)),
                    ("name", Json::Str(x.name.to_string())),
                    ("type", Json::Str(x.type_name().into())),
                    ("vhost", Json::Str(vhost.into())),
                ],
                &x.arguments,
            )
        }));
        queues.extend(queue_defs.iter().map(|q| {
            let kind = q
                .arguments
                .get("x-queue-type")
                .and_then(FieldValue::as_str)
                .unwrap_or("classic");
            with_typed_arguments(
                vec![
                    ("arguments", table_to_json(&q.arguments)),
                    ("auto_delete", Json::Bool(q.auto_delete)),
                    ("durable", Json::Bool(q.durable)),
                    ("name", Json::Str(q.name.to_string())),
                    ("type", Json::Str(kind.into())),
                    ("vhost", Json::Str(vhost.into())),
                ],
                &q.arguments,
            )
        }));
        bindings.extend(binding_defs.iter().map(|b| {
            with_typed_arguments(
                vec![
                    ("arguments", table_to_json(&b.arguments)),
                    ("destination", Json::Str(b.destination.to_string())),
                    (
                        "destination_type",
                        Json::Str(b.destination_kind.name().into()),
                    ),
                    ("routing_key", Json::Str(b.routing_key.to_string())),
                    ("source", Json::Str(b.source.to_string())),
                    ("vhost", Json::Str(vhost.into())),
                ],
                &b.arguments,
            )
        }));
    }
}

impl Definitions {
    /// The exchanges, queues and bindings of `vhost`, to fill.
    fn contents_mut(
        &mut self,
        vhost: &str,
    ) -> (
        &mut Vec<ExchangeDef>,
        &mut Vec<QueueDef>,
        &mut Vec<BindingDef>,
    ) {
        if vhost == DEFAULT_VHOST {
            return (&mut self.exchanges, &mut self.queues, &mut self.bindings);
        }
        let c = self.others.entry(vhost.to_string()).or_default();
        (&mut c.exchanges, &mut c.queues, &mut c.bindings)
    }

    /// Every vhost's contents, "/" first.
    fn all_contents(&self) -> Vec<ContentsOf<'_>> {
        let mut all = vec![(
            DEFAULT_VHOST,
            &self.exchanges[..],
            &self.queues[..],
            &self.bindings[..],
        )];
        for (name, c) in &self.others {
            all.push((
                name.as_str(),
                &c.exchanges[..],
                &c.queues[..],
                &c.bindings[..],
            ));
        }
        all
    }

    /// Applies an import on top of these definitions, as RabbitMQ imports
    /// into a running node: users (and their permissions) are replaced,
    /// exchanges and queues that already exist are kept as they are
    /// (`rabbit_exchange:declare` and `rabbit_amqqueue:declare` return the
    /// existing one), bindings are added.
    pub(crate) fn merge(&mut self, import: Definitions) {
        for user in import.users.clone() {
            match self.users.iter_mut().find(|u| u.name == user.name) {
                Some(existing) => {
                    // An import's permissions are added to the user's own:
                    // a vhost it says nothing about keeps its permissions.
                    let mut permissions = std::mem::take(&mut existing.permissions);
                    permissions.extend(user.permissions.clone());
                    let mut topic = std::mem::take(&mut existing.topic_permissions);
                    topic.retain(|t| {
                        !user
                            .topic_permissions
                            .iter()
                            .any(|n| n.vhost == t.vhost && n.exchange == t.exchange)
                    });
                    topic.extend(user.topic_permissions.clone());
                    *existing = user;
                    existing.permissions = permissions;
                    existing.topic_permissions = topic;
                }
                None => self.users.push(user),
            }
        }
        if !import.vhosts.is_empty() && self.vhosts.is_empty() {
            self.vhosts.push(VhostDef::default_vhost());
        }
        for vhost in import.vhosts.clone() {
            match self.vhosts.iter_mut().find(|v| v.name == vhost.name) {
                Some(existing) => {
                    // An import adds its policies to the vhost's own.
                    let mut policies = std::mem::take(&mut existing.policies);
                    policies.extend(vhost.policies.clone());
                    *existing = vhost;
                    existing.policies = policies;
                }
                None => self.vhosts.push(vhost),
            }
        }
        let contents: Vec<(String, VhostContents)> = import
            .all_contents()
            .into_iter()
            .map(|(v, x, q, b)| {
                let contents = VhostContents {
                    exchanges: x.to_vec(),
                    queues: q.to_vec(),
                    bindings: b.to_vec(),
                };
                (v.to_string(), contents)
            })
            .collect();
        for (vhost, c) in contents {
            let (exchanges, queues, bindings) = (c.exchanges, c.queues, c.bindings);
            let (own_exchanges, own_queues, own_bindings) = self.contents_mut(&vhost);
            for exchange in exchanges {
                if !own_exchanges.iter().any(|x| x.name == exchange.name) {
                    own_exchanges.push(exchange);
                }
            }
            for queue in queues {
                if !own_queues.iter().any(|q| q.name == queue.name) {
                    own_queues.push(queue);
                }
            }
            for binding in bindings {
                if !own_bindings.contains(&binding) {
                    own_bindings.push(binding);
                }
            }
        }
        self.others.retain(|_, c| *c != VhostContents::default());
    }

    /// The durable definitions of a running broker: every vhost's (see
    /// [`Definitions::snapshot_of`]) and the access-control database.
    pub(crate) fn snapshot<'a, V: DefinitionsView + 'a>(
        vhosts: impl IntoIterator<Item = (&'a str, &'a V)>,
        users: &Users,
    ) -> Definitions {
        let mut definitions = Definitions {
            users: users.sorted().into_iter().cloned().collect(),
            vhosts: users.vhosts().cloned().collect(),
            ..Definitions::default()
        };
        for (name, vhost) in vhosts {
            let one = Definitions::snapshot_of(vhost, users);
            if name == DEFAULT_VHOST {
                definitions.exchanges = one.exchanges;
                definitions.queues = one.queues;
                definitions.bindings = one.bindings;
            } else {
                let contents = VhostContents {
                    exchanges: one.exchanges,
                    queues: one.queues,
                    bindings: one.bindings,
                };
                if contents != VhostContents::default() {
                    definitions.others.insert(name.to_string(), contents);
                }
            }
        }
        definitions
    }

    /// The durable definitions of a running broker: what survives a restart.
    /// The default exchanges are left out (RabbitMQ does not export them),
    /// and so are exclusive queues, transient objects, and bindings unless
    /// both ends are durable.
    pub(crate) fn snapshot_of(vhost: &impl DefinitionsView, users: &Users) -> Definitions {
        let mut exchanges: Vec<&ExchangeDef> = vhost
            .exchanges()
            .map(|(def, _)| def)
            .filter(|d| d.durable && !is_default_exchange(&d.name))
            .collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        let mut queues: Vec<&QueueMeta> = vhost.queues().filter(|q| q.is_durable()).collect();
        queues.sort_by_key(|q| q.id);
        // Bindings by source exchange name, each exchange's in the order made.
        let mut sources: Vec<(&ExchangeDef, &[Binding])> = vhost.exchanges().collect();
        sources.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let mut bindings = Vec::new();
        for (_, exchange_bindings) in sources {
            for binding in exchange_bindings {
                if !binding_is_durable(vhost, binding) {
                    continue;
                }
                let (destination, destination_kind) = match &binding.destination {
                    Destination::Exchange(name) => (name.clone(), DestinationKind::Exchange),
                    Destination::Queue(queue) => match vhost.queue_by_id(queue.id) {
                        Some(meta) => (meta.name.clone(), DestinationKind::Queue),
                        None => continue,
                    },
                };
                bindings.push(BindingDef {
                    source: binding.source.clone(),
                    destination,
                    destination_kind,
                    routing_key: binding.routing_key.clone(),
                    arguments: binding.arguments.clone(),
                });
            }
        }
        Definitions {
            users: users.sorted().into_iter().cloned().collect(),
            vhosts: users.vhosts().cloned().collect(),
            others: BTreeMap::new(),
            exchanges: exchanges.into_iter().cloned().collect(),
            queues: queues
                .into_iter()
                .map(|q| QueueDef {
                    name: q.name.clone(),
                    durable: q.durable,
                    auto_delete: q.auto_delete,
                    arguments: q.arguments.clone(),
                })
                .collect(),
            bindings,
        }
    }

    /// The changes that re-create these exchanges, queues and bindings on
    /// a fresh broker of `shard_count` shards. Queues get new ids and are
    /// spread over the shards as the metadata owner would place them.
    pub(crate) fn restore_plan(&self, shard_count: usize) -> Result<RestorePlan, String> {
        let mut plan = RestorePlan {
            next_queue_id: 1,
            ..RestorePlan::default()
        };
        for (vhost, exchanges, queues, bindings) in self.all_contents() {
            plan_vhost(vhost, exchanges, queues, bindings, shard_count, &mut plan).map_err(
                |e| match vhost {
                    DEFAULT_VHOST => e,
                    _ => format!("vhost '{}': {}", vhost, e),
                },
            )?;
        }
        Ok(plan)
    }

    /// The users and vhosts of these definitions: "/" alone when the file
    /// names none.
    pub(crate) fn users(&self) -> Users {
        let vhosts = if self.vhosts.is_empty() {
            vec![VhostDef::default_vhost()]
        } else {
            self.vhosts.clone()
        };
        Users::from_parts(self.users.clone(), vhosts)
    }
}

/// The changes that re-create one vhost's exchanges, queues and bindings.
fn plan_vhost(
    vhost_name: &str,
    exchanges: &[ExchangeDef],
    queues: &[QueueDef],
    bindings: &[BindingDef],
    shard_count: usize,
    plan: &mut RestorePlan,
) -> Result<(), String> {
    let shard_count = shard_count.max(1);
    let vhost_name = ShortStr::from(vhost_name.to_string());
    let mut vhost = Catalog::new();
    let push = |vhost: &mut Catalog, plan: &mut RestorePlan, change: MetaChange| {
        vhost.apply(&change);
        plan.changes.push((vhost_name.clone(), change));
    };
    for exchange in exchanges {
        if vhost.exchange(&exchange.name).is_some() {
            continue;
        }
        push(
            &mut vhost,
            plan,
            MetaChange::ExchangeCreated(exchange.clone()),
        );
    }
    for queue in queues {
        if vhost.queue(&queue.name).is_some() {
            continue;
        }
        let args = QueueArgs::parse(&queue.name, &queue.arguments)
            .and_then(|args| {
                let (durable, auto_delete) = (queue.durable, queue.auto_delete);
                check_queue_type_flags(&queue.name, &args, durable, false, auto_delete)
                    .map(|()| args)
            })
            .map_err(|e| format!("queue '{}': {}", queue.name, e.text))?;
        // As `metadata::Owner::place` spreads queues nobody owns.
        plan.next_shard = (plan.next_shard + 1) % shard_count;
        let meta = QueueMeta {
            id: QueueId(plan.next_queue_id),
            vhost: vhost_name.clone(),
            name: queue.name.clone(),
            shard: ShardId(plan.next_shard as u16),
            durable: queue.durable,
            exclusive_owner: None,
            auto_delete: queue.auto_delete,
            arguments: queue.arguments.clone(),
            args,
        };
        plan.next_queue_id += 1;
        push(&mut vhost, plan, MetaChange::QueueCreated(meta));
    }
    for def in bindings {
        let describe = || {
            format!(
                "binding from exchange '{}' to {} '{}' (routing key '{}')",
                def.source,
                def.destination_kind.name(),
                def.destination,
                def.routing_key
            )
        };
        let Some((source, source_bindings)) = vhost.exchange(&def.source) else {
            plan.warnings.push(format!(
                "{} skipped: no exchange '{}'",
                describe(),
                def.source
            ));
            continue;
        };
        if source.kind == ExchangeKind::Headers
            && MatchMode::from_arguments(&def.arguments).is_none()
        {
            plan.warnings
                .push(format!("{} skipped: invalid x-match argument", describe()));
            continue;
        }
        let destination = match def.destination_kind {
            DestinationKind::Exchange => {
                if vhost.exchange(&def.destination).is_none() {
                    plan.warnings.push(format!(
                        "{} skipped: no exchange '{}'",
                        describe(),
                        def.destination
                    ));
                    continue;
                }
                Destination::Exchange(def.destination.clone())
            }
            DestinationKind::Queue => match vhost.queue(&def.destination) {
                Some(meta) => Destination::Queue(meta.queue_ref()),
                None => {
                    plan.warnings.push(format!(
                        "{} skipped: no queue '{}'",
                        describe(),
                        def.destination
                    ));
                    continue;
                }
            },
        };
        let binding = Binding {
            source: def.source.clone(),
            destination,
            routing_key: def.routing_key.clone(),
            arguments: def.arguments.clone(),
        };
        if source_bindings.iter().any(|b| b.same_as(&binding)) {
            continue;
        }
        push(&mut vhost, plan, MetaChange::BindingAdded(binding));
    }
    Ok(())
}

/// "" and "amq.*": declared by every vhost, never written or imported.
fn is_default_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// A binding survives a restart when both its ends do.
pub(crate) fn binding_is_durable(vhost: &impl DefinitionsView, binding: &Binding) -> bool {
    let exchange_durable = |name: &str| vhost.exchange(name).is_some_and(|(def, _)| def.durable);
    let destination = match &binding.destination {
        Destination::Exchange(name) => exchange_durable(name),
        Destination::Queue(queue) => vhost
            .queue_by_id(queue.id)
            .is_some_and(QueueMeta::is_durable),
    };
    exchange_durable(&binding.source) && destination
}

/// True if applying `change` to `vhost` (not yet applied) alters what
/// [`Definitions::snapshot`] returns, so the definitions file must be
/// written again. Cheap, so that declaring transient queues costs nothing.
pub(crate) fn changes_durable_definitions(
    vhost: &impl DefinitionsView,
    change: &MetaChange,
) -> bool {
    match change {
        MetaChange::ExchangeCreated(def) => def.durable,
        MetaChange::ExchangeDeleted(name) => {
            vhost.exchange(name).is_some_and(|(def, _)| def.durable)
        }
        MetaChange::QueueCreated(meta) => meta.is_durable(),
        MetaChange::QueueDeleted(queue) => vhost
            .queue_by_id(queue.id)
            .is_some_and(QueueMeta::is_durable),
        MetaChange::BindingAdded(binding) | MetaChange::BindingRemoved(binding) => {
            binding_is_durable(vhost, binding)
        }
    }
}

/// Reads one file's categories, remembering what it skipped.
struct Reader {
    source: Source,
    warnings: Vec<String>,
    /// `rabbitmq_version` (or `rabbit_version`) of the exporting node.
    version: String,
}

impl Reader {
    /// A top-level array; a missing one is empty.
    fn list<'a>(&self, doc: &'a Json, key: &str) -> Result<&'a [Json], String> {
        match doc.get(key) {
            None | Some(Json::Null) => Ok(&[]),
            Some(Json::Array(items)) => Ok(items),
            Some(other) => Err(format!(
                "\"{}\" is {}, expected an array",
                key,
                other.kind()
            )),
        }
    }

    /// A vhost with its description, tags and limits.
    fn vhost(&mut self, item: &Json, ctx: &str) -> Result<VhostDef, String> {
        let name = required_str(item, "name", ctx)?;
        let ctx = format!("{} ('{}')", ctx, name);
        let mut vhost = VhostDef::new(name);
        let metadata = item.get("metadata");
        // 3.10 exports "metadata"; older ones put "description" at the top.
        vhost.description = metadata
            .and_then(|m| m.get("description"))
            .or_else(|| item.get("description"))
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(Json::Array(tags)) = metadata.and_then(|m| m.get("tags")) {
            vhost.tags = tags
                .iter()
                .filter_map(Json::as_str)
                .map(str::to_string)
                .collect();
        }
        let (max_connections, max_queues) = limits(item, "max-queues", &ctx)?;
        vhost.limits = VhostLimits {
            max_connections,
            max_queues,
        };
        Ok(vhost)
    }

    /// `rabbit_auth_backend_internal:put_user`, for a user in a file.
    fn user(&mut self, item: &Json, ctx: &str) -> Result<User, String> {
        let name = required_str(item, "name", ctx)?;
        let ctx = format!("{} ('{}')", ctx, name);
        let tags = match (item.get("tags"), item.get("administrator")) {
            (Some(Json::Array(tags)), _) => tags
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(|s| s.trim().to_string())
                        .ok_or_else(|| format!("{}: \"tags\" must hold strings", ctx))
                })
                .collect::<Result<Vec<_>, _>>()?,
            // Before 3.9 tags were one comma-separated string.
            (Some(Json::Str(tags)), _) => tags
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            (None | Some(Json::Null), Some(admin)) => {
                let admin = admin.as_bool().or(match admin.as_str() {
                    Some("true") => Some(true),
                    Some("false") => Some(false),
                    _ => None,
                });
                match admin {
                    Some(true) => vec!["administrator".to_string()],
                    Some(false) => vec![],
                    None => {
                        return Err(format!("{}: \"administrator\" must be true or false", ctx))
                    }
                }
            }
            (None | Some(Json::Null), None) => vec![],
            (Some(other), _) => {
                return Err(format!(
                    "{}: \"tags\" is {}, expected an array of strings",
                    ctx,
                    other.kind()
                ))
            }
        };
        let password = optional_str(item, "password", &ctx)?;
        let password_hash = optional_str(item, "password_hash", &ctx)?;
        let password = match (password, password_hash) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{}: both \"password\" and \"password_hash\" are given",
                    ctx
                ))
            }
            (Some(cleartext), None) => Some(PasswordHash::new(HashingAlgorithm::Sha256, cleartext)),
            (None, Some("")) | (None, None) => None,
            (None, Some(hash)) => {
                let algorithm = match optional_str(item, "hashing_algorithm", &ctx)? {
                    Some(name) => HashingAlgorithm::parse(name).ok_or_else(|| {
                        format!(
                            "{}: unknown hashing_algorithm '{}' (warren knows \
                             rabbit_password_hashing_sha256, _sha512 and _md5)",
                            ctx, name
                        )
                    })?,
                    None => default_hashing(&self.version),
                };
                Some(
                    PasswordHash::from_base64(algorithm, hash)
                        .map_err(|e| format!("{}: {}", ctx, e))?,
                )
            }
        };
        let (max_connections, max_channels) = limits(item, "max-channels", &ctx)?;
        let mut user = User::new(name.to_string(), password, tags, BTreeMap::new());
        user.limits = UserLimits {
            max_connections,
            max_channels,
        };
        Ok(user)
    }

    fn exchange(&mut self, item: &Json, ctx: &str) -> Result<Option<ExchangeDef>, String> {
        let name = required_str(item, "name", ctx)?;
        let ctx = format!("{} ('{}')", ctx, name);
        if is_default_exchange(name) {
            // rabbit_definitions: "Skipping import of an exchange whose name begins with 'amq.'"
            self.warnings.push(format!(
                "{}: skipped: the default exchanges exist already",
                ctx
            ));
            return Ok(None);
        }
        let kind_name = required_str(item, "type", &ctx)?;
        let arguments = self.arguments(item, &ctx)?;
        // A delayed exchange routes by its x-delayed-type, checked as a
        // declare checks it.
        let delayed = kind_name == DELAYED_TYPE;
        let kind = if delayed {
            exchange::delayed_type(&arguments).map_err(|e| format!("{}: {}", ctx, e.text))?
        } else {
            ExchangeKind::parse(kind_name).ok_or_else(|| {
                format!(
                    "{}: unknown exchange type '{}' (warren supports direct, fanout, topic, \
                     headers and x-delayed-message)",
                    ctx, kind_name
                )
            })?
        };
        Ok(Some(ExchangeDef {
            name: short_str(name, "name", &ctx)?,
            kind,
            delayed,
            durable: optional_bool(item, "durable", true, &ctx)?,
            auto_delete: optional_bool(item, "auto_delete", false, &ctx)?,
            internal: optional_bool(item, "internal", false, &ctx)?,
            arguments,
        }))
    }

    fn queue(&mut self, item: &Json, ctx: &str) -> Result<Option<QueueDef>, String> {
        let name = required_str(item, "name", ctx)?;
        let ctx = format!("{} ('{}')", ctx, name);
        if name.is_empty() {
            return Err(format!("{}: a queue needs a name", ctx));
        }
        if name.starts_with("amq.") && self.source == Source::Import {
            // rabbit_definitions: "Skipping import of a queue whose name begins with 'amq.'"
            self.warnings.push(format!(
                "{}: skipped: queue names starting with 'amq.' are not imported",
                ctx
            ));
            return Ok(None);
        }
        Ok(Some(QueueDef {
            name: short_str(name, "name", &ctx)?,
            durable: optional_bool(item, "durable", true, &ctx)?,
            auto_delete: optional_bool(item, "auto_delete", false, &ctx)?,
            arguments: self.arguments(item, &ctx)?,
        }))
    }

    fn binding(&mut self, item: &Json, ctx: &str) -> Result<Option<BindingDef>, String> {
        let source = required_str(item, "source", ctx)?;
        let destination = required_str(item, "destination", ctx)?;
        let ctx = format!("{} ('{}' to '{}')", ctx, source, destination);
        let destination_kind = match required_str(item, "destination_type", &ctx)? {
            "queue" => DestinationKind::Queue,
            "exchange" => DestinationKind::Exchange,
            other => {
                return Err(format!(
                    "{}: destination_type '{}' is neither \"queue\" nor \"exchange\"",
                    ctx, other
                ))
            }
        };
        if source.is_empty() {
            // Every queue is bound to the default exchange by its name already.
            return Ok(None);
        }
        Ok(Some(BindingDef {
            source: short_str(source, "source", &ctx)?,
            destination: short_str(destination, "destination", &ctx)?,
            destination_kind,
            routing_key: short_str(
                optional_str(item, "routing_key", &ctx)?.unwrap_or(""),
                "routing_key",
                &ctx,
            )?,
            arguments: self.arguments(item, &ctx)?,
        }))
    }

    /// `arguments`, or the exact table in `warren_typed_arguments` while it
    /// still says the same thing.
    fn arguments(&mut self, item: &Json, ctx: &str) -> Result<FieldTable, String> {
        let from_json = match item.get("arguments") {
            None | Some(Json::Null) => FieldTable::default(),
            // rabbit_definitions:args([]) is an empty table too.
            Some(Json::Array(a)) if a.is_empty() => FieldTable::default(),
            Some(Json::Object(members)) => json_members_to_table(members, ctx)?,
            Some(other) => {
                return Err(format!(
                    "{}: \"arguments\" is {}, expected an object",
                    ctx,
                    other.kind()
                ))
            }
        };
        let Some(typed) = item.get(TYPED_ARGUMENTS) else {
            return Ok(from_json);
        };
        let decoded = typed
            .as_str()
            .and_then(base64_decode)
            .and_then(|b| FieldTable::decode(&Bytes::from(b)).ok());
        match decoded {
            Some(table) if table_to_json(&table) == table_to_json(&from_json) => Ok(table),
            _ => {
                self.warnings.push(format!(
                    "{}: \"{}\" does not match \"arguments\" (edited by hand?); using \"arguments\"",
                    ctx, TYPED_ARGUMENTS
                ));
                Ok(from_json)
            }
        }
    }
}

/// `rabbit_auth_backend_internal:hashing_algorithm/2`: exports from before
/// 3.6 hashed with MD5 and did not say so.
/// A definition's vhost ("/" when it names none).
fn vhost_of(item: &Json, ctx: &str) -> Result<String, String> {
    Ok(optional_str(item, "vhost", ctx)?
        .unwrap_or(DEFAULT_VHOST)
        .to_string())
}

/// `max-connections` and `other` from a user's or vhost's "limits": an
/// object of numbers (an empty array is no limits, as 3.10 exports it). A
/// negative limit is no limit, as in RabbitMQ.
fn limits(item: &Json, other: &str, ctx: &str) -> Result<(Option<u64>, Option<u64>), String> {
    let members = match item.get("limits") {
        None | Some(Json::Null) => return Ok((None, None)),
        Some(Json::Array(a)) if a.is_empty() => return Ok((None, None)),
        Some(Json::Object(members)) => members,
        Some(other) => {
            return Err(format!(
                "{}: \"limits\" is {}, expected an object",
                ctx,
                other.kind()
            ))
        }
    };
    let mut found = (None, None);
    for (key, value) in members {
        let n = match value {
            Json::Int(n) => *n,
            _ => return Err(format!("{}: limit '{}' must be an integer", ctx, key)),
        };
        let n = u64::try_from(n).ok();
        if key == "max-connections" {
            found.0 = n;
        } else if key == other {
            found.1 = n;
        } else {
            return Err(format!("{}: unknown limit '{}'", ctx, key));
        }
    }
    Ok(found)
}

fn default_hashing(version: &str) -> HashingAlgorithm {
    let old = ["3.0.", "3.1.", "3.2.", "3.3.", "3.4.", "3.5."];
    if old.iter().any(|prefix| version.starts_with(prefix)) {
        HashingAlgorithm::Md5
    } else {
        HashingAlgorithm::Sha256
    }
}

fn required_str<'a>(item: &'a Json, key: &str, ctx: &str) -> Result<&'a str, String> {
    match item.get(key) {
        Some(Json::Str(s)) => Ok(s),
        None | Some(Json::Null) => Err(format!("{}: \"{}\" is missing", ctx, key)),
        Some(other) => Err(format!(
            "{}: \"{}\" is {}, expected a string",
            ctx,
            key,
            other.kind()
        )),
    }
}

fn optional_str<'a>(item: &'a Json, key: &str, ctx: &str) -> Result<Option<&'a str>, String> {
    match item.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Str(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "{}: \"{}\" is {}, expected a string",
            ctx,
            key,
            other.kind()
        )),
    }
}

fn optional_bool(item: &Json, key: &str, default: bool, ctx: &str) -> Result<bool, String> {
    match item.get(key) {
        None | Some(Json::Null) => Ok(default),
        Some(Json::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "{}: \"{}\" is {}, expected true or false",
            ctx,
            key,
            other.kind()
        )),
    }
}

fn short_str(s: &str, key: &str, ctx: &str) -> Result<ShortStr, String> {
    if s.len() > warren_protocol::types::SHORTSTR_LEN_MAX {
        return Err(format!(
            "{}: \"{}\" is longer than 255 bytes, more than AMQP allows",
            ctx, key
        ));
    }
    Ok(ShortStr::from(s))
}

/// `rabbit_misc:to_amqp_table`: integers become `long`, other numbers
/// `double`, strings `longstr`, arrays and objects nest. A repeated key
/// keeps its last value. RabbitMQ refuses null; warren reads it as void,
/// which is what it writes for a void argument.
fn json_members_to_table(members: &[(String, Json)], ctx: &str) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (key, value) in members {
        let key = short_str(key, "arguments", ctx)?;
        let value = json_to_value(value, ctx)?;
        match table.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => table.0.push((key, value)),
        }
    }
    Ok(table)
}

fn json_to_value(value: &Json, ctx: &str) -> Result<FieldValue, String> {
    Ok(match value {
        Json::Null => FieldValue::Void,
        Json::Bool(b) => FieldValue::Bool(*b),
        Json::Int(n) => FieldValue::I64(*n),
        Json::Float(x) => FieldValue::F64(*x),
        Json::Str(s) => FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes())),
        Json::Array(items) => FieldValue::Array(
            items
                .iter()
                .map(|i| json_to_value(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(members) => FieldValue::Table(json_members_to_table(members, ctx)?),
    })
}

/// `rabbit_misc:amqp_table`: a field table as JSON, the way RabbitMQ exports it.
pub(crate) fn table_to_json(table: &FieldTable) -> Json {
    Json::Object(
        table
            .iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &FieldValue) -> Json {
    match value {
        FieldValue::Bool(b) => Json::Bool(*b),
        FieldValue::I8(n) => Json::Int(i64::from(*n)),
        FieldValue::U8(n) => Json::Int(i64::from(*n)),
        FieldValue::I16(n) => Json::Int(i64::from(*n)),
        FieldValue::U16(n) => Json::Int(i64::from(*n)),
        FieldValue::I32(n) => Json::Int(i64::from(*n)),
        FieldValue::U32(n) => Json::Int(i64::from(*n)),
        FieldValue::I64(n) => Json::Int(*n),
        FieldValue::Timestamp(n) => match i64::try_from(*n) {
            Ok(n) => Json::Int(n),
            Err(_) => Json::Float(*n as f64),
        },
        FieldValue::F32(x) => Json::Float(f64::from(*x)),
        FieldValue::F64(x) => Json::Float(*x),
        FieldValue::Decimal { scale, value } => {
            Json::Float(f64::from(*value) / 10f64.powi(i32::from(*scale)))
        }
        FieldValue::LongStr(bytes) | FieldValue::ByteArray(bytes) => utf8_safe(bytes),
        FieldValue::Array(items) => Json::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Table(table) => table_to_json(table),
        FieldValue::Void => Json::Null,
    }
}

/// `rabbit_misc:utf8_safe`: text as is; other bytes as RabbitMQ marks them.
fn utf8_safe(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(s) => Json::Str(s.to_string()),
        Err(_) => Json::Str(format!("Not UTF-8, base64 is: {}", base64_encode(bytes))),
    }
}

/// The object's members, plus the exact arguments when JSON would lose
/// their types (see the module doc).
fn with_typed_arguments(mut members: Vec<(&str, Json)>, arguments: &FieldTable) -> Json {
    let as_json = table_to_json(arguments);
    let members_json = match &as_json {
        Json::Object(m) => m.as_slice(),
        _ => &[],
    };
    let read_back = json_members_to_table(members_json, "");
    if read_back.as_ref() != Ok(arguments) {
        let mut encoded = BytesMut::new();
        arguments.encode(&mut encoded);
        // The encoding starts with the table's u32 length, which decode does not take.
        members.push((TYPED_ARGUMENTS, Json::Str(base64_encode(&encoded[4..]))));
        members.sort_by(|a, b| a.0.cmp(b.0));
    }
    Json::Object(
        members
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::{ConnId, ConnRef};

    fn s(v: &str) -> FieldValue {
        FieldValue::LongStr(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs
            .iter()
            .map(|(k, v)| (ShortStr::from(*k), v.clone()))
            .collect()
    }

    fn parse(text: &str) -> Parsed {
        Definitions::from_json(text, Source::Import).unwrap()
    }

    fn parse_err(text: &str) -> String {
        Definitions::from_json(text, Source::Import).unwrap_err()
    }

    const EXPORT: &str = include_str!("../../tests/data/rabbitmq-3.10.8-export.json");

    #[test]
    fn reads_a_rabbitmq_3_10_export() {
        let parsed = parse(EXPORT);
        let d = &parsed.definitions;
        let mut names: Vec<&str> = d.users.iter().map(|u| u.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["alice", "bob", "carol", "dave", "guest"]);
        let alice = d.users.iter().find(|u| u.name == "alice").unwrap();
        assert_eq!(alice.tags, ["monitoring", "management"]);
        assert_eq!(
            alice.permissions.get("/"),
            Some(&Permission::new("^alice\\..*", ".*", ".*"))
        );
        assert!(alice.password.as_ref().unwrap().verify("alice-secret"));
        let carol = d.users.iter().find(|u| u.name == "carol").unwrap();
        assert_eq!(
            carol.password.as_ref().unwrap().algorithm,
            HashingAlgorithm::Sha512
        );
        assert!(carol.password.as_ref().unwrap().verify("carol-512"));
        let dave = d.users.iter().find(|u| u.name == "dave").unwrap();
        assert!(dave.password.as_ref().unwrap().verify("dave-md5"));

        let limited = d
            .queues
            .iter()
            .find(|q| q.name == "orders.limited")
            .unwrap();
        assert!(limited.durable && !limited.auto_delete);
        assert_eq!(
            limited.arguments.get("x-message-ttl"),
            Some(&FieldValue::I64(60000))
        );
        assert_eq!(
            limited.arguments.get("x-overflow"),
            Some(&s("reject-publish"))
        );
        let transient = d.queues.iter().find(|q| q.name == "transient.q").unwrap();
        assert!(!transient.durable);
        assert!(d
            .queues
            .iter()
            .any(|q| q.name == "autodel.q" && q.auto_delete));

        let ae = d.exchanges.iter().find(|x| x.name == "with-ae").unwrap();
        assert_eq!(
            ae.arguments.get("alternate-exchange"),
            Some(&s("broadcast"))
        );
        assert_eq!(d.exchanges.len(), 8);
        let headers = d.bindings.iter().find(|b| b.source == "by-header").unwrap();
        assert_eq!(headers.arguments.get("level"), Some(&FieldValue::I64(3)));
        assert_eq!(headers.arguments.get("x-match"), Some(&s("all")));
        assert!(d.bindings.iter().any(|b| b.source == "broadcast"
            && b.destination == "events"
            && b.destination_kind == DestinationKind::Exchange));

        // Every vhost is kept, with its permissions.
        let names: Vec<&str> = d.vhosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["other", "/"]);
        assert_eq!(d.vhosts[1].description, "Default virtual host");
        assert_eq!(alice.permissions.get("other"), Some(&Permission::full()));
        let warnings = parsed.warnings.join("\n");
        assert!(!warnings.contains("policies"), "{warnings}");
        let root = d.vhosts.iter().find(|v| v.name == "/").unwrap();
        let policy = &root.policies["ttl-policy"];
        assert_eq!(policy.settings.message_ttl_ms, Some(1000));
        assert_eq!(policy.pattern.as_str(), "^ttl\\.");
    }

    #[test]
    fn restoring_the_export_warns_about_the_binding_to_an_internal_exchange() {
        // RabbitMQ leaves internal exchanges out of an export but not the
        // bindings to them; its import drops such bindings silently.
        let plan = parse(EXPORT).definitions.restore_plan(2).unwrap();
        let warnings = plan.warnings.join("\n");
        assert!(
            warnings.contains("binding from exchange 'events' to exchange 'internal.fanout' (routing key 'audit.#') skipped: no exchange 'internal.fanout'"),
            "{warnings}"
        );
        assert!(
            warnings.contains("binding from exchange 'internal.fanout'"),
            "{warnings}"
        );
        let queues = plan
            .changes
            .iter()
            .filter(|(_, c)| matches!(c, MetaChange::QueueCreated(_)))
            .count();
        assert_eq!(queues, 9);
        assert_eq!(plan.next_queue_id, 10);
    }

    #[test]
    fn restore_places_queues_as_the_owner_does() {
        let defs = Definitions {
            queues: ["a", "b", "c"]
                .iter()
                .map(|n| QueueDef {
                    name: ShortStr::from(*n),
                    durable: true,
                    auto_delete: false,
                    arguments: FieldTable::default(),
                })
                .collect(),
            ..Definitions::default()
        };
        let plan = defs.restore_plan(2).unwrap();
        let placed: Vec<(u64, u16)> = plan
            .changes
            .iter()
            .filter_map(|(_, c)| match c {
                MetaChange::QueueCreated(m) => Some((m.id.0, m.shard.0)),
                _ => None,
            })
            .collect();
        assert_eq!(placed, [(1, 1), (2, 0), (3, 1)]);
        assert_eq!((plan.next_queue_id, plan.next_shard), (4, 1));
        let one = defs.restore_plan(1).unwrap();
        assert!(one
            .changes
            .iter()
            .all(|(_, c)| matches!(c, MetaChange::QueueCreated(m) if m.shard == ShardId(0))));
    }

    #[test]
    fn a_queue_warren_cannot_create_is_an_error() {
        let err = parse(
            r#"{"queues": [{"name": "qq", "vhost": "/", "durable": true,
            "auto_delete": false, "arguments": {"x-queue-type": "stream"}}]}"#,
        )
        .definitions
        .restore_plan(1)
        .unwrap_err();
        assert!(err.starts_with("queue 'qq': "), "{err}");
    }

    #[test]
    fn errors_name_the_definition() {
        assert_eq!(
            parse_err(r#"{"exchanges": [{"name": "h", "vhost": "/", "type": "x-consistent-hash", "durable": true}]}"#),
            "exchanges[0] ('h'): unknown exchange type 'x-consistent-hash' (warren supports direct, fanout, topic, headers and x-delayed-message)"
        );
        assert_eq!(
            parse_err(r#"{"exchanges": [{"name": "d", "type": "x-delayed-message", "arguments": {"x-delayed-type": "x-delayed-message"}}]}"#),
            "exchanges[0] ('d'): Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'"
        );
        assert_eq!(
            parse_err(r#"{"queues": [{"vhost": "/"}]}"#),
            "queues[0]: \"name\" is missing"
        );
        assert_eq!(
            parse_err(r#"{"queues": [{"name": "q", "durable": "yes"}]}"#),
            "queues[0] ('q'): \"durable\" is a string, expected true or false"
        );
        assert_eq!(
            parse_err(r#"{"bindings": [{"source": "x", "destination": "q", "destination_type": "topic"}]}"#),
            "bindings[0] ('x' to 'q'): destination_type 'topic' is neither \"queue\" nor \"exchange\""
        );
        assert_eq!(
            parse_err(r#"{"users": [{"name": "u", "password_hash": "abc", "hashing_algorithm": "rabbit_password_hashing_sha1"}]}"#),
            "users[0] ('u'): unknown hashing_algorithm 'rabbit_password_hashing_sha1' (warren knows rabbit_password_hashing_sha256, _sha512 and _md5)"
        );
        assert_eq!(
            parse_err(
                r#"{"users": [{"name": "u", "password_hash": "AAAA", "hashing_algorithm": "rabbit_password_hashing_sha256"}]}"#
            ),
            "users[0] ('u'): password_hash decodes to 3 bytes, but this hashing_algorithm makes 36"
        );
        assert_eq!(
            parse_err(
                r#"{"permissions": [{"user": "ghost", "vhost": "/", "configure": "", "write": "", "read": ""}]}"#
            ),
            "permissions[0]: no user 'ghost' in this file for these permissions"
        );
        assert_eq!(
            parse_err("[]"),
            "the document is an array, expected an object with \"users\", \"queues\", ..."
        );
        assert_eq!(
            parse_err(r#"{"queues": {}}"#),
            "\"queues\" is an object, expected an array"
        );
        assert!(parse_err("{\"queues\": [}").starts_with("invalid JSON at line 1, column 13"));
    }

    #[test]
    fn users_old_formats_and_cleartext() {
        let parsed = parse(
            r#"{"rabbit_version": "3.5.7", "users": [
                {"name": "old", "password_hash": "+cEHEpDAUHNVnHQizc0yPIPNXKw=", "tags": "administrator, monitoring"},
                {"name": "legacy", "password": "pw", "administrator": "true"},
                {"name": "nopass", "password_hash": "", "tags": []}]}"#,
        );
        let users = &parsed.definitions.users;
        // No hashing_algorithm in a 3.5 export: MD5 (this is dave's hash).
        assert!(users[0].password.as_ref().unwrap().verify("dave-md5"));
        assert_eq!(users[0].tags, ["administrator", "monitoring"]);
        assert!(users[1].password.as_ref().unwrap().verify("pw"));
        assert_eq!(users[1].tags, ["administrator"]);
        assert_eq!(users[2].password, None);
        assert!(
            parse_err(r#"{"users": [{"name": "u", "password": "a", "password_hash": ""}]}"#)
                .contains("both \"password\" and \"password_hash\"")
        );
    }

    #[test]
    fn default_exchanges_and_amq_queues_are_not_imported() {
        let text = r#"{"exchanges": [{"name": "amq.direct", "type": "direct"}, {"name": "", "type": "direct"}],
                       "queues": [{"name": "amq.gen-abc"}]}"#;
        let parsed = parse(text);
        assert!(parsed.definitions.exchanges.is_empty());
        assert!(parsed.definitions.queues.is_empty());
        assert_eq!(parsed.warnings.len(), 3, "{:?}", parsed.warnings);
        // warren's own file keeps its durable server-named queues.
        let own = Definitions::from_json(text, Source::DataDir).unwrap();
        assert_eq!(own.definitions.queues.len(), 1);
    }

    #[test]
    fn written_definitions_read_back_the_same() {
        let mut users = Users::new(Some(("admin".into(), "pw".into())))
            .sorted()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        users.push(User::new(
            "viewer".into(),
            None,
            vec!["monitoring".into()],
            BTreeMap::new(),
        ));
        let defs = Definitions {
            users,
            vhosts: Vec::new(),
            others: BTreeMap::new(),
            exchanges: vec![
                ExchangeDef {
                    name: ShortStr::from("later"),
                    kind: ExchangeKind::Topic,
                    delayed: true,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: table(&[("x-delayed-type", s("topic"))]),
                },
                ExchangeDef {
                    name: ShortStr::from("x"),
                    kind: ExchangeKind::Headers,
                    delayed: false,
                    durable: true,
                    auto_delete: true,
                    internal: true,
                    arguments: table(&[("alternate-exchange", s("ae"))]),
                },
            ],
            queues: vec![QueueDef {
                name: ShortStr::from("q \"quoted\" é"),
                durable: true,
                auto_delete: false,
                arguments: table(&[
                    ("x-message-ttl", FieldValue::I32(1000)),
                    ("x-max-priority", FieldValue::U8(5)),
                ]),
            }],
            bindings: vec![BindingDef {
                source: ShortStr::from("x"),
                destination: ShortStr::from("q \"quoted\" é"),
                destination_kind: DestinationKind::Queue,
                routing_key: ShortStr::from(""),
                arguments: table(&[
                    ("x-match", s("any")),
                    ("level", FieldValue::I32(3)),
                    (
                        "raw",
                        FieldValue::ByteArray(Bytes::from_static(b"\xff\x00")),
                    ),
                    (
                        "nested",
                        FieldValue::Table(table(&[("t", FieldValue::Timestamp(7))])),
                    ),
                ]),
            }],
        };
        let mut defs = defs;
        // A second vhost with limits, its own queue, and a user's
        // permissions, topic permission and limits there.
        let mut v = VhostDef::new("v");
        v.description = "team v".into();
        v.limits.max_queues = Some(10);
        defs.vhosts = vec![VhostDef::default_vhost(), v];
        defs.others.insert(
            "v".into(),
            VhostContents {
                exchanges: vec![],
                queues: vec![QueueDef {
                    name: ShortStr::from("in-v"),
                    durable: true,
                    auto_delete: false,
                    arguments: FieldTable::default(),
                }],
                bindings: vec![],
            },
        );
        let viewer = defs.users.iter_mut().find(|u| u.name == "viewer").unwrap();
        viewer
            .permissions
            .insert("v".into(), Permission::new("", "^w", ".*"));
        viewer.topic_permissions.push(TopicPermission {
            vhost: "v".into(),
            exchange: "amq.topic".into(),
            write: "^{username}\\.".into(),
            read: ".*".into(),
        });
        viewer.limits.max_connections = Some(3);
        let text = defs.to_json();
        let back = Definitions::from_json(&text, Source::DataDir).unwrap();
        assert!(back.warnings.is_empty(), "{:?}", back.warnings);
        let mut expected = defs.clone();
        expected.users.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back.definitions, expected, "{text}");
        // The typed copy is there only where JSON loses a type.
        assert_eq!(text.matches(TYPED_ARGUMENTS).count(), 2, "{text}");
        assert!(text.contains("\"internal\": true"), "{text}");
        assert!(text.contains("\"type\": \"x-delayed-message\""), "{text}");
        // RabbitMQ's own reading of the arguments (the typed copy ignored).
        let plain: Json = json::parse(&text).unwrap();
        let binding = &plain.get("bindings").unwrap().as_array().unwrap()[0];
        assert_eq!(
            binding.get("arguments").unwrap().get("raw"),
            Some(&Json::Str("Not UTF-8, base64 is: /wA=".into()))
        );
    }

    #[test]
    fn hand_edited_arguments_win_over_the_typed_copy() {
        let defs = Definitions {
            queues: vec![QueueDef {
                name: ShortStr::from("q"),
                durable: true,
                auto_delete: false,
                arguments: table(&[("x-message-ttl", FieldValue::I32(1000))]),
            }],
            ..Definitions::default()
        };
        let edited = defs
            .to_json()
            .replace("\"x-message-ttl\": 1000", "\"x-message-ttl\": 2000");
        let back = Definitions::from_json(&edited, Source::DataDir).unwrap();
        assert_eq!(
            back.definitions.queues[0].arguments.get("x-message-ttl"),
            Some(&FieldValue::I64(2000))
        );
        assert!(
            back.warnings[0].contains("edited by hand"),
            "{:?}",
            back.warnings
        );
    }

    #[test]
    fn merge_keeps_existing_queues_and_replaces_users() {
        let mut base = parse(
            r#"{"users": [{"name": "u", "password": "old", "tags": []}],
                "permissions": [{"user": "u", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
                "queues": [{"name": "q", "durable": true, "arguments": {"x-max-length": 1}}]}"#,
        )
        .definitions;
        let import = parse(
            r#"{"users": [{"name": "u", "password": "new", "tags": ["monitoring"]}],
                "queues": [{"name": "q", "durable": true, "arguments": {"x-max-length": 2}},
                           {"name": "r", "durable": true}]}"#,
        )
        .definitions;
        base.merge(import);
        assert_eq!(base.users.len(), 1);
        assert!(base.users[0].password.as_ref().unwrap().verify("new"));
        assert_eq!(base.users[0].tags, ["monitoring"]);
        assert_eq!(
            base.users[0].permissions.get("/"),
            Some(&Permission::full())
        );
        assert_eq!(base.queues.len(), 2);
        assert_eq!(
            base.queues[0].arguments.get("x-max-length"),
            Some(&FieldValue::I64(1))
        );
    }

    #[test]
    fn snapshot_keeps_only_what_survives_a_restart() {
        let mut vhost = Catalog::new();
        let exchange = |name: &str, durable: bool| {
            MetaChange::ExchangeCreated(ExchangeDef {
                name: ShortStr::from(name),
                kind: ExchangeKind::Direct,
                delayed: false,
                durable,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            })
        };
        let queue = |id: u64, name: &str, durable: bool, exclusive: bool| QueueMeta {
            id: QueueId(id),
            vhost: ShortStr::from("/"),
            name: ShortStr::from(name),
            shard: ShardId(0),
            durable,
            exclusive_owner: exclusive.then_some(ConnRef {
                shard: ShardId(0),
                conn: ConnId(1),
            }),
            auto_delete: false,
            arguments: FieldTable::default(),
            args: QueueArgs::default(),
        };
        let durable_q = queue(1, "durable", true, false);
        let transient_q = queue(2, "transient", false, false);
        let exclusive_q = queue(3, "exclusive", true, true);
        let bind = |source: &str, to: Destination| {
            MetaChange::BindingAdded(Binding {
                source: ShortStr::from(source),
                destination: to,
                routing_key: ShortStr::from("k"),
                arguments: FieldTable::default(),
            })
        };
        let changes = vec![
            exchange("dx", true),
            exchange("tx", false),
            MetaChange::QueueCreated(durable_q.clone()),
            MetaChange::QueueCreated(transient_q.clone()),
            MetaChange::QueueCreated(exclusive_q.clone()),
            bind("dx", Destination::Queue(durable_q.queue_ref())),
            bind("dx", Destination::Queue(transient_q.queue_ref())),
            bind("dx", Destination::Queue(exclusive_q.queue_ref())),
            bind("tx", Destination::Queue(durable_q.queue_ref())),
            bind("amq.topic", Destination::Queue(durable_q.queue_ref())),
            bind("dx", Destination::Exchange(ShortStr::from("tx"))),
            bind("amq.fanout", Destination::Exchange(ShortStr::from("dx"))),
        ];
        let relevant: Vec<bool> = changes
            .iter()
            .map(|c| {
                let r = changes_durable_definitions(&vhost, c);
                vhost.apply(c);
                r
            })
            .collect();
        assert_eq!(
            relevant,
            [true, false, true, false, false, true, false, false, false, true, false, true]
        );
        let snapshot = Definitions::snapshot_of(&vhost, &Users::default());
        let names: Vec<&str> = snapshot.exchanges.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["dx"]);
        let names: Vec<&str> = snapshot.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["durable"]);
        let bindings: Vec<(&str, &str)> = snapshot
            .bindings
            .iter()
            .map(|b| (b.source.as_str(), b.destination.as_str()))
            .collect();
        assert_eq!(
            bindings,
            [
                ("amq.fanout", "dx"),
                ("amq.topic", "durable"),
                ("dx", "durable")
            ]
        );
        // Deleting the durable queue matters; deleting the transient one does not.
        assert!(changes_durable_definitions(
            &vhost,
            &MetaChange::QueueDeleted(durable_q.queue_ref())
        ));
        assert!(!changes_durable_definitions(
            &vhost,
            &MetaChange::QueueDeleted(transient_q.queue_ref())
        ));
        assert!(changes_durable_definitions(
            &vhost,
            &MetaChange::ExchangeDeleted(ShortStr::from("dx"))
        ));
        assert!(!changes_durable_definitions(
            &vhost,
            &MetaChange::ExchangeDeleted(ShortStr::from("tx"))
        ));
    }
}
