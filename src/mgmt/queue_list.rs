//! Queues as the management API shows them (`GET /api/queues[/vhost]` and
//! one queue's `GET`), in RabbitMQ's JSON shape, built to stay fast with
//! many queues while the shards are busy.
//!
//! A list takes one round trip to the shards: the users (for the vhost
//! check and the policies, from shard 0) and every shard's queue figures
//! are asked at once. A shard hands over plain numbers per queue
//! (`ControlRequest::QueueFigures`); what never changes about a queue
//! (its vhost, name, flags and declared arguments, the arguments already
//! as JSON) is kept here in the `QueueCatalog` from the first answer that
//! carried it, so that a shard copies a queue's definition once in the
//! queue's life rather than once per list. Each entry also keeps the
//! queue's JSON as the last list wrote it, with the figures it was
//! written from: a queue whose figures, rates and policy did not change
//! since (most of 10,000 queues, between two polls) is copied, not
//! serialised again. That costs this thread about 800 bytes a queue;
//! serialising 10,000 queues anew costs tens of milliseconds of a core.
//! Lists that sort or pick columns serialise items that borrow from the
//! catalog (`mgmt::list`).
//!
//! It imports what `mgmt` may import.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::broker::control::{ControlReply, ControlRequest, QueueFigures, QueueFiguresReport};
use crate::metadata::auth::Users;
use crate::metadata::vhost::QueueMeta;
use crate::mgmt::api::{queue_counts_of, ApiResult, App, VhostFilter};
use crate::mgmt::auth::ApiUser;
use crate::mgmt::error::ApiError;
use crate::mgmt::json::table_to_json;
use crate::mgmt::list::{self, Params};
use crate::mgmt::rates::{Rates, QUEUE_FIELDS};
use crate::model::ids::QueueId;

/// A queue's key in the catalog and in `Rates`: its shard and its id.
type QueueKey = (u16, u64);

/// What the control plane knows of every queue that does not change: one
/// entry per live queue, filled from the shards' answers.
#[derive(Default)]
pub(crate) struct QueueCatalog {
    queues: HashMap<QueueKey, QueueFixed>,
    /// Per shard, the highest queue id whose definition is here: the next
    /// question asks only for the definitions of queues above it.
    meta_after: Vec<Option<QueueId>>,
}

/// A queue's parts that never change, as the API shows them.
pub(crate) struct QueueFixed {
    pub(crate) vhost: String,
    pub(crate) name: String,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    /// The declared arguments, as JSON.
    arguments: Value,
    /// The queue's JSON as the last full list wrote it.
    rendered: Option<Rendered>,
}

/// A queue's JSON and what it was written from.
struct Rendered {
    from: RenderedFrom,
    json: Vec<u8>,
}

/// Everything a queue's JSON holds that may change.
#[derive(PartialEq)]
struct RenderedFrom {
    counts: [u64; QUEUE_FIELDS],
    rates: [f64; QUEUE_FIELDS],
    consumers: u32,
    memory_bytes: u64,
    policy: Option<String>,
    effective_policy_definition: Value,
}

impl QueueFixed {
    fn of(meta: &QueueMeta) -> QueueFixed {
        QueueFixed {
            vhost: meta.vhost.as_str().to_string(),
            name: meta.name.as_str().to_string(),
            durable: meta.durable,
            auto_delete: meta.auto_delete,
            exclusive: meta.exclusive_owner.is_some(),
            arguments: table_to_json(&meta.arguments),
            rendered: None,
        }
    }
}

impl QueueCatalog {
    /// Takes the definitions a shard sent; true if every queue it has
    /// figures for is now known.
    fn take(&mut self, report: &mut QueueFiguresReport) -> bool {
        let shard = report.shard.0;
        if self.meta_after.len() <= usize::from(shard) {
            self.meta_after.resize(usize::from(shard) + 1, None);
        }
        for meta in report.metas.drain(..) {
            let after = &mut self.meta_after[usize::from(shard)];
            *after = (*after).max(Some(meta.id));
            self.queues
                .entry((shard, meta.id.0))
                .or_insert_with(|| QueueFixed::of(&meta));
        }
        report
            .queues
            .iter()
            .all(|q| self.queues.contains_key(&(shard, q.id.0)))
    }
}

#[derive(Serialize)]
struct Rate {
    rate: f64,
}

#[derive(Serialize)]
struct QueueMessageStats {
    publish: u64,
    publish_details: Rate,
    deliver: u64,
    deliver_details: Rate,
    deliver_no_ack: u64,
    deliver_no_ack_details: Rate,
    get: u64,
    get_details: Rate,
    get_no_ack: u64,
    get_no_ack_details: Rate,
    deliver_get: u64,
    deliver_get_details: Rate,
    ack: u64,
    ack_details: Rate,
    redeliver: u64,
    redeliver_details: Rate,
}

/// A queue in RabbitMQ's shape; it borrows what does not change.
#[derive(Serialize)]
struct QueueJson<'a> {
    name: &'a str,
    vhost: &'a str,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: &'a Value,
    #[serde(rename = "type")]
    kind: &'static str,
    node: &'a str,
    state: &'static str,
    policy: Option<String>,
    effective_policy_definition: Value,
    consumers: u32,
    messages: u64,
    messages_details: Rate,
    messages_ready: u32,
    messages_ready_details: Rate,
    messages_unacknowledged: u32,
    messages_unacknowledged_details: Rate,
    memory: u64,
    message_stats: QueueMessageStats,
    /// warren's own: the shard that owns the queue.
    warren_shard: u16,
}

fn message_stats(c: &[u64; QUEUE_FIELDS], r: &[f64; QUEUE_FIELDS]) -> QueueMessageStats {
    QueueMessageStats {
        publish: c[0],
        publish_details: Rate { rate: r[0] },
        deliver: c[1],
        deliver_details: Rate { rate: r[1] },
        deliver_no_ack: c[2],
        deliver_no_ack_details: Rate { rate: r[2] },
        get: c[3],
        get_details: Rate { rate: r[3] },
        get_no_ack: c[4],
        get_no_ack_details: Rate { rate: r[4] },
        deliver_get: c[1] + c[2] + c[3] + c[4],
        deliver_get_details: Rate {
            rate: r[1] + r[2] + r[3] + r[4],
        },
        ack: c[5],
        ack_details: Rate { rate: r[5] },
        redeliver: c[6],
        redeliver_details: Rate { rate: r[6] },
    }
}

/// One queue's JSON from its fixed parts and its figures, with its rates
/// from `rates` (which keeps this reading) and the policy that applies;
/// and what in it may change.
fn queue_json<'a>(
    fixed: &'a QueueFixed,
    node: &'a str,
    shard: u16,
    figures: &QueueFigures,
    users: &Users,
    rates: &mut Rates,
    now: Instant,
) -> (RenderedFrom, QueueJson<'a>) {
    let counts = queue_counts_of(figures.ready, figures.unacked, &figures.stats);
    let r = rates
        .queues
        .entry((shard, figures.id.0))
        .or_default()
        .observe(now, counts);
    let (policy, effective_policy_definition) =
        crate::mgmt::policy::applied(users, &fixed.vhost, &fixed.name, true);
    let from = RenderedFrom {
        counts,
        rates: r,
        consumers: figures.consumers,
        memory_bytes: figures.memory_bytes,
        policy: policy.clone(),
        effective_policy_definition: effective_policy_definition.clone(),
    };
    let json = QueueJson {
        name: &fixed.name,
        vhost: &fixed.vhost,
        durable: fixed.durable,
        auto_delete: fixed.auto_delete,
        exclusive: fixed.exclusive,
        arguments: &fixed.arguments,
        kind: "classic",
        node,
        state: "running",
        policy,
        effective_policy_definition,
        consumers: figures.consumers,
        messages: counts[7],
        messages_details: Rate { rate: r[7] },
        messages_ready: figures.ready,
        messages_ready_details: Rate { rate: r[8] },
        messages_unacknowledged: figures.unacked,
        messages_unacknowledged_details: Rate { rate: r[9] },
        memory: figures.memory_bytes,
        message_stats: message_stats(&counts, &r),
        warren_shard: shard,
    };
    (from, json)
}

impl App {
    /// Every shard's queue figures, with the catalog holding the
    /// definition of every queue in them (and no other).
    pub(crate) async fn queue_figures(&self) -> Result<Vec<QueueFiguresReport>, ApiError> {
        let meta_after = self.catalog().meta_after.clone();
        let replies = self
            .plane
            .ask_each(|shard| ControlRequest::QueueFigures {
                meta_after: meta_after.get(shard).copied().flatten(),
            })
            .await?;
        let mut reports: Vec<QueueFiguresReport> = replies
            .into_iter()
            .filter_map(|r| match r {
                ControlReply::QueueFigures(report) => Some(report),
                _ => None,
            })
            .collect();
        let mut incomplete = Vec::new();
        {
            let mut catalog = self.catalog();
            for (index, report) in reports.iter_mut().enumerate() {
                if !catalog.take(report) {
                    incomplete.push(index);
                }
            }
        }
        // A queue below the mark yet unknown here: a list that ran at the
        // same time forgot it (it did not see it yet). Rare; that shard is
        // asked again for every definition.
        for index in incomplete {
            let shard = usize::from(reports[index].shard.0);
            let reply = self
                .plane
                .ask(shard, ControlRequest::QueueFigures { meta_after: None })
                .await?;
            if let ControlReply::QueueFigures(mut report) = reply {
                self.catalog().take(&mut report);
                reports[index] = report;
            }
        }
        let total: usize = reports.iter().map(|r| r.queues.len()).sum();
        let mut catalog = self.catalog();
        // Every queue in the reports is in the catalog: if the catalog is
        // larger, it holds queues deleted since, and perhaps queues that a
        // list running at the same time learnt of after these reports
        // were made. Only those known before this question was asked, and
        // missing from the answers, are surely gone.
        if catalog.queues.len() > total {
            let live = live_keys(&reports);
            catalog.queues.retain(|key, _| {
                live.contains(key)
                    || meta_after
                        .get(usize::from(key.0))
                        .copied()
                        .flatten()
                        .is_none_or(|after| key.1 > after.0)
            });
        }
        Ok(reports)
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, QueueCatalog> {
        self.queue_catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each vhost's queue counts, summed.
    pub(crate) async fn vhost_totals(
        &self,
    ) -> Result<HashMap<String, [u64; QUEUE_FIELDS]>, ApiError> {
        let reports = self.queue_figures().await?;
        let catalog = self.catalog();
        let mut totals: HashMap<String, [u64; QUEUE_FIELDS]> = HashMap::new();
        for report in &reports {
            for q in &report.queues {
                let Some(fixed) = catalog.queues.get(&(report.shard.0, q.id.0)) else {
                    continue;
                };
                let total = match totals.get_mut(&fixed.vhost) {
                    Some(total) => total,
                    None => totals
                        .entry(fixed.vhost.clone())
                        .or_insert([0; QUEUE_FIELDS]),
                };
                let counts = queue_counts_of(q.ready, q.unacked, &q.stats);
                for (total, count) in total.iter_mut().zip(counts) {
                    *total += count;
                }
            }
        }
        Ok(totals)
    }
}

fn live_keys(reports: &[QueueFiguresReport]) -> HashSet<QueueKey> {
    reports
        .iter()
        .flat_map(|r| r.queues.iter().map(|q| (r.shard.0, q.id.0)))
        .collect()
}

/// `GET /api/queues` (`vhost: None`) and `GET /api/queues/VHOST`.
pub(crate) async fn list_queues(
    app: &App,
    user: &ApiUser,
    vhost: Option<&str>,
    params: &Params,
) -> ApiResult {
    let started = Instant::now();
    let (users, reports) = futures_lite::future::zip(app.users(), app.queue_figures()).await;
    let (users, reports) = (users?, reports?);
    let asked = started.elapsed();
    let filter = VhostFilter::new(&users, user, vhost)?;
    let now = Instant::now();
    let total: usize = reports.iter().map(|r| r.queues.len()).sum();
    let mut catalog = app.catalog();
    let mut rates = app.rates.lock().unwrap_or_else(|e| e.into_inner());
    let node = app.node.name.as_str();
    let reads_members = list::reads_members(params);
    let mut rendered = 0usize;
    let mut listed: Vec<(QueueKey, &QueueFigures)> = Vec::with_capacity(total);
    for report in &reports {
        let shard = report.shard.0;
        for q in &report.queues {
            let key = (shard, q.id.0);
            let Some(fixed) = catalog.queues.get_mut(&key) else {
                continue;
            };
            if !filter.keeps(&fixed.vhost) {
                continue;
            }
            listed.push((key, q));
            if reads_members {
                continue;
            }
            let (from, json) = queue_json(fixed, node, shard, q, &users, &mut rates, now);
            if fixed.rendered.as_ref().is_some_and(|r| r.from == from) {
                continue;
            }
            let json = serde_json::to_vec(&json).unwrap_or_default();
            fixed.rendered = Some(Rendered { from, json });
            rendered += 1;
        }
    }
    // Readings of deleted queues go with them.
    if rates.queues.len() > total {
        let live = live_keys(&reports);
        rates.queues.retain(|key, _| live.contains(key));
    }
    let built;
    let response = if reads_members {
        let mut items = Vec::with_capacity(listed.len());
        for (key, q) in &listed {
            if let Some(fixed) = catalog.queues.get(key) {
                items.push(queue_json(fixed, node, key.0, q, &users, &mut rates, now).1);
            }
        }
        drop(rates);
        items.sort_unstable_by(|a, b| (a.vhost, a.name).cmp(&(b.vhost, b.name)));
        built = started.elapsed();
        list::respond(items, |q| q.name, params)
    } else {
        drop(rates);
        let mut items: Vec<(&QueueFixed, &[u8])> = listed
            .iter()
            .filter_map(|(key, _)| catalog.queues.get(key))
            .filter_map(|fixed| Some((fixed, fixed.rendered.as_ref()?.json.as_slice())))
            .collect();
        items.sort_unstable_by(|a, b| (&a.0.vhost, &a.0.name).cmp(&(&b.0.vhost, &b.0.name)));
        built = started.elapsed();
        list::respond_rendered(items, |q| &q.0.name, |q| q.1, params)
    };
    tracing::debug!(
        queues = total,
        rendered,
        asked_us = asked.as_micros() as u64,
        build_us = (built - asked).as_micros() as u64,
        serialise_us = (started.elapsed() - built).as_micros() as u64,
        "GET /api/queues"
    );
    response
}

/// One queue's JSON, from its owner's report.
pub(crate) fn one_queue(
    app: &App,
    info: &crate::broker::control::QueueInfo,
    users: &Users,
) -> ApiResult {
    let fixed = QueueFixed::of(&info.meta);
    let figures = QueueFigures {
        id: info.meta.id,
        ready: info.ready,
        unacked: info.unacked,
        consumers: info.consumers,
        memory_bytes: info.memory_bytes,
        stats: info.stats,
    };
    let mut rates = app.rates.lock().unwrap_or_else(|e| e.into_inner());
    let (_, json) = queue_json(
        &fixed,
        &app.node.name,
        info.meta.shard.0,
        &figures,
        users,
        &mut rates,
        Instant::now(),
    );
    Ok(crate::mgmt::api::json_response(&json))
}
