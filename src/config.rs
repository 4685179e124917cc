//! Every limit and default of the broker, in one place.
//!
//! Defaults follow RabbitMQ 3.x wherever a client could notice the difference
//! (port, frame_max, channel_max, heartbeat); the rest are warren's own and say
//! why next to them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::model::alarms::{DiskFreeLimit, MemoryWatermark};

/// AMQP's well-known port, as RabbitMQ listens on it.
pub const AMQP_PORT: u16 = 5672;
/// amqps's well-known port (AMQP over TLS), as RabbitMQ's TLS listener.
pub const AMQPS_PORT: u16 = 5671;
/// How long a client may take over its TLS handshake before its socket is
/// closed (a client that speaks plain AMQP to the TLS port is refused at
/// its first bytes; this bounds one that sends nothing).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a TLS socket at once during the handshake (a TLS record
/// is at most 16 KiB plus its overhead).
pub(crate) const TLS_HANDSHAKE_READ_SIZE: usize = 17 * 1024;
/// RabbitMQ's default `frame_max` (128 KiB).
pub(crate) const FRAME_SIZE_MAX: u32 = 131_072;
/// The spec's minimum `frame_max`; a client may not negotiate less.
pub(crate) const FRAME_SIZE_MIN: u32 = 4096;
/// RabbitMQ's default `channel_max`.
pub(crate) const CHANNEL_MAX: u16 = 2047;
/// RabbitMQ's default heartbeat timeout, in seconds.
pub(crate) const HEARTBEAT_S: u16 = 60;
/// How long a client may take between the protocol header and `connection.open`
/// (RabbitMQ's handshake_timeout is 10 s).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for `connection.close-ok` after closing a connection ourselves.
pub(crate) const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection whose handshake failed in a way RabbitMQ answers without a
/// close frame (a refused connection.tune-ok) stays open, silent, before its socket is
/// closed: RabbitMQ's `SILENT_CLOSE_DELAY`, which keeps a failing client from
/// hammering the broker.
pub(crate) const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);
/// How often each shard's timer tick runs: heartbeats, mailbox retries, and the
/// guarantee that an executor never parks forever (docs/runtime.md).
pub(crate) const TICK: Duration = Duration::from_millis(5);
/// Bytes a connection's reader asks the socket for at once.
pub(crate) const READ_BUFFER_SIZE: usize = 128 * 1024;
/// What a connection's receive buffer and read buffer start with. The
/// receive buffer doubles each time a read fills it, up to
/// `READ_BYTES_PER_TURN_MAX`, and the read buffer then grows by
/// `READ_BUFFER_SIZE` at a time; an idle connection, which only ever reads
/// its handshake, keeps the small ones (a real client's start-ok is a few
/// hundred bytes). 64 + 128 KiB at once made 10,000 idle connections cost
/// 28 KiB each (tuning.md).
pub(crate) const RECEIVE_BUFFER_SIZE_MIN: usize = 1024;
/// Bytes a connection reads (and handles) before it waits for the next
/// reactor turn, so one publisher cannot starve the rest of its shard: its
/// consumers above all, whose acks wait behind it. Before flow control, a
/// smaller budget was how a consumer got its share (1 → 1 with prefetch 200
/// and an ack per 50: 1/8 of the publisher's rate with 128 KiB, 1/4 with
/// 32 KiB); with flow control holding publishers whose queues grow, 64 KiB
/// measured best both with acks (~0.9 against ~1.0 CPU-s per million at
/// 32 KiB) and with autoack (~0.52 against ~0.63), as fewer turns cost less.
pub(crate) const READ_BYTES_PER_TURN_MAX: usize = 64 * 1024;
/// Flow control (credit per queue, in the spirit of RabbitMQ's credit
/// flow): a connection publishing into a queue with more than
/// `FLOW_READY_HIGH` ready messages and consumers waits, before it reads
/// again, until the queue is down to `FLOW_READY_LOW`, whatever shard it is
/// on and however busy the shards are; so a publisher is held to the pace
/// at which the queue drains, and the queue stays bounded. Without it a
/// publisher, which costs less per message than a consumer with acks, fills
/// the queue faster than the consumers drain it, and a growing queue costs
/// fresh memory (page faults) and cache misses for every message. The gap
/// between the marks is the hysteresis: the consumers have
/// `FLOW_READY_LOW` messages to take while the publisher wakes up. A
/// narrow gap keeps the shard reading its publisher in small steps rather
/// than idling and waking again: at 1 → 1 with acks on one shard, a low
/// mark of 3072 received 1.1-1.4x what 1024 did on a loaded 2-CPU host.
pub(crate) const FLOW_READY_HIGH: usize = 4096;
pub(crate) const FLOW_READY_LOW: usize = 3072;
/// Flow control across shards: the credit a shard may have spent on one
/// queue of another shard and not had granted back. An enqueue costs one,
/// plus one per KiB of its `Message::memory_size` (`flow_credit_cost`), so
/// that the credit bounds both the messages (8192 small ones) and the
/// bytes (8 MiB of large ones) in flight towards one queue, which no
/// shard counts toward the memory alarm while they travel. The queue's
/// shard grants it back per mailbox batch (one `ShardMsg::Credit` per peer
/// and batch, listing the queues), unless the queue outpaces its consumers
/// (`FLOW_READY_HIGH`); then not until it is down to `FLOW_READY_LOW`, or
/// its consumers stall. A held queue holds only the publishers routing to
/// it. Large enough that a grant's round trip (a peer's wake-up, ~0.1 ms;
/// milliseconds on a loaded machine) never stalls a publisher that is not
/// being held.
pub(crate) const FLOW_CREDIT: i64 = 8192;
/// See `FLOW_CREDIT`: the bytes of a message that cost one more credit.
pub(crate) const FLOW_CREDIT_BYTES_PER_UNIT: u64 = 1024;
/// A publisher held by a queue is let go once the queue's consumers have
/// taken nothing for this long: stalled consumers (prefetch used up, no
/// acks) slow no publisher, and the queue buffers for them until a
/// consumer takes a message again. Long enough that a consumer merely
/// descheduled on a loaded machine, or waiting on hops between shards,
/// does not count as stalled (at 10 ms, a 1 → 1 queue on a machine with a
/// load average of 15 grew past 100,000 messages); a publisher into a
/// queue whose consumers are stuck pays it once per stall.
pub(crate) const FLOW_STALL: Duration = Duration::from_millis(100);
/// Bytes (`Message::memory_size`) of the deliveries a queue may have on
/// their way to one consumer on another shard, not yet reported arrived.
/// Bounds what a consumer without prefetch (autoack, or prefetch 0) draws
/// into the mailbox before its connection's output bound
/// (`DELIVERY_OUTPUT_BYTES_MAX`) can stop it, and keeps those bytes
/// counted (`Queue::memory_bytes`). Large enough for a mailbox round trip
/// at full rate (~1 ms at a million small messages a second).
pub(crate) const DELIVERY_TRANSIT_BYTES_MAX: u64 = 1 << 20;
/// Deliveries a queue may send ahead to a consumer on another shard, beyond
/// its prefetch: the consumer's channel holds them and writes them as the
/// client's acks make room under the prefetch, so that an ack is answered
/// with deliveries at once, not after two mailbox hops (the ack to the
/// queue's shard, the deliveries back). The client never holds more than
/// its prefetch unacknowledged; the queue counts the held ones as
/// unacknowledged and gets them back, not redelivered, if the consumer
/// goes. A consumer gets `prefetch_count * REMOTE_LOOKAHEAD_FACTOR`, at most
/// `REMOTE_LOOKAHEAD_MAX`, and the queue sends ahead only while the
/// consumer's unacknowledged bytes are below `REMOTE_LOOKAHEAD_BYTES_MAX`;
/// none below `REMOTE_LOOKAHEAD_PREFETCH_MIN`, so that the fair dispatch of
/// small prefetches (prefetch 1 for a work queue) stays exact, and none with
/// a global (channel) prefetch. The window must cover the messages a
/// consumer takes during a round trip between shards (~1 ms or more on a
/// loaded 2-CPU machine: thousands of small messages at full rate). 1 → 1
/// with prefetch 200 on a loaded 2-CPU machine received 0.38 M msg/s with
/// a factor of 4 and 0.42-0.52 M with 20, against 0.14 M without any.
pub(crate) const REMOTE_LOOKAHEAD_FACTOR: u32 = 16;
/// See `REMOTE_LOOKAHEAD_FACTOR`.
pub(crate) const REMOTE_LOOKAHEAD_MAX: u32 = 4096;
/// See `REMOTE_LOOKAHEAD_FACTOR`: large messages are sent ahead only up to
/// this many bytes (`Message::memory_size`) unacknowledged per consumer.
pub(crate) const REMOTE_LOOKAHEAD_BYTES_MAX: u64 = 2 << 20;
/// See `REMOTE_LOOKAHEAD_FACTOR`.
pub(crate) const REMOTE_LOOKAHEAD_PREFETCH_MIN: u32 = 10;
/// Bytes of unflushed output after which a connection stops reading until its
/// socket drains (a slow consumer must not make the broker buffer without bound).
pub(crate) const WRITE_BUFFER_HIGH_WATERMARK: usize = 4 * 1024 * 1024;
/// Bytes of a connection's output (frames queued plus the write in progress)
/// above which its queues stop handing it deliveries, until the writer has
/// got the output down to `DELIVERY_OUTPUT_BYTES_RESUME`. A consumer whose
/// socket is full, above all an autoack one, which has no prefetch to stop
/// it, then leaves its messages in their queues, where they count toward the
/// memory alarm, instead of piling up in its output buffer: credit, not
/// memory (RabbitMQ's credit flow between queue, channel and writer). The
/// cost is one comparison per delivery and two shard messages per consumer
/// each time a connection fills up and drains.
pub(crate) const DELIVERY_OUTPUT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// See `DELIVERY_OUTPUT_BYTES_MAX`: the hysteresis that keeps a consumer
/// barely keeping up from being stopped and started for every message.
pub(crate) const DELIVERY_OUTPUT_BYTES_RESUME: usize = DELIVERY_OUTPUT_BYTES_MAX / 4;
/// Publishes a channel's open transaction may hold before tx.commit.
/// RabbitMQ 3.10 has no such limit (the channel process keeps every
/// uncommitted publish in a queue of its own); warren refuses the next
/// publish with 406 PRECONDITION_FAILED, closing the channel, so that one
/// transaction cannot hold an unbounded count of messages. Their bytes also
/// count toward the memory alarm, which blocks the publisher first when
/// its messages are large.
pub(crate) const TX_PUBLISHES_MAX: u32 = 65_536;
/// Batches a mailbox between two shards holds before the sender keeps an
/// overflow batch locally and stops reading the sockets that feed it.
pub(crate) const MAILBOX_BATCHES_MAX: usize = 1024;
/// Messages in one shard's overflow towards a peer before its readers pause.
pub(crate) const MAILBOX_OVERFLOW_MAX: usize = 65_536;
/// The default `--mailbox-interval-us`. Each batch a peer receives costs
/// it a wake-up when it was asleep, and the sleep before it a `membarrier`
/// (glommio), an interrupt to every CPU running the broker's threads; a
/// peer that is sent a batch at most this often wakes that much less, for
/// at most this long a wait on a busy path. Only a batch that follows a
/// large one waits (`MAILBOX_HOLD_AFTER`), so a confirm, a reply or a
/// message at a moderate rate is never held. Measured in
/// docs/performance-history.md.
pub const MAILBOX_INTERVAL: Duration = Duration::from_micros(400);
/// Messages in the last batch to a peer from which the next one may wait
/// for the interval: fewer, and the traffic is light enough that holding
/// would add latency and spare little.
pub(crate) const MAILBOX_HOLD_AFTER: usize = 16;
/// Messages in a batch that go at once, whatever the interval.
pub(crate) const MAILBOX_BATCH_FULL: usize = 1024;
/// Emptied batches a shard keeps per peer to fill again (`Outbox::recycle`),
/// and the largest (in messages) it keeps: a burst's batch is let go.
pub(crate) const SPARE_BATCHES_MAX: usize = 8;
pub(crate) const SPARE_BATCH_CAPACITY_MAX: usize = 4096;

/// RabbitMQ's default `max_message_size` (128 MiB): a content header
/// announcing a larger body is refused with 406 PRECONDITION_FAILED.
pub const MESSAGE_SIZE_MAX: u64 = 128 << 20;
/// The largest `--max-message-size` accepted: RabbitMQ's own ceiling
/// (`?MAX_MSG_SIZE`, 512 MiB).
pub const MESSAGE_SIZE_LIMIT: u64 = 512 << 20;
/// CC and BCC routing keys one publish may carry together. RabbitMQ has no
/// such limit; every key routes the message once more, so without one a
/// header frame of 20,000 keys costs seconds per publish. A header frame
/// (at most `frame_max`) holds about 26,000 of the smallest keys, so this
/// is generous for real use and refuses only the abusive.
pub(crate) const SENDER_SELECTED_KEYS_MAX: usize = 1024;
/// After a failed login, the next login from the same address on the same
/// shard is answered no sooner than this after the one before (RabbitMQ
/// answers at once; warren slows password guessing).
pub(crate) const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);
/// The longest a login waits for its turn: one whose turn is further off
/// is refused at once, unchecked, so that a flood of logins from one
/// address cannot book its turns for ever.
pub(crate) const LOGIN_WAIT_MAX: Duration = Duration::from_secs(5);
/// How long an address stays slowed after its last failed login.
pub(crate) const LOGIN_FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Addresses with recent failed logins a shard remembers; past it, the
/// ones whose memory has expired are forgotten first, then the oldest.
pub(crate) const LOGIN_FAILURE_ADDRESSES_MAX: usize = 4096;

/// The size at which a shard's message store starts a new segment file.
/// Larger segments mean fewer files; smaller ones give disk space back
/// sooner, since a segment is deleted only once all of its messages are gone.
pub const SEGMENT_SIZE: u64 = 32 << 20;
/// The smallest segment size accepted (`--segment-size`).
pub const SEGMENT_SIZE_MIN: u64 = 4096;

/// Bytes of ready messages a queue keeps in memory (`--queue-window`);
/// past it, new messages are paged to the store and read back ahead of
/// delivery. A few MiB keep a consumer busy for thousands of messages
/// while the next ones are read (tuning.md).
pub const QUEUE_WINDOW_BYTES: u64 = 4 << 20;
/// Bytes of ready and unacknowledged messages all queues of a shard keep
/// in memory (`--shard-window`): past it, every queue pages new messages
/// out. Keep shards x this well under the memory watermark.
pub const SHARD_WINDOW_BYTES: u64 = 128 << 20;
/// What a queue whose next message is paged reads back at once while its
/// shard's window is full: with a thousand queues being drained, the
/// window is overrun by at most this much each.
pub(crate) const PAGE_READ_FULL_BYTES: u64 = 64 * 1024;
/// How long a shard's message store waits before it writes again a batch
/// the disk refused (full, a file size limit, an I/O error); the disk
/// alarm blocks publishers meanwhile (tuning.md, "A full or slow disk").
pub(crate) const STORE_WRITE_RETRY_AFTER: Duration = Duration::from_millis(250);
/// The environment variable that slows every synced batch of the message
/// store by this many milliseconds, as a slow disk would: for tests only
/// (`WARREN_TEST_SYNC_DELAY_MS=200`). Read at start, logged when set.
pub const SYNC_DELAY_TEST_ENV: &str = "WARREN_TEST_SYNC_DELAY_MS";

/// The definitions log (`<data-dir>/definitions.log`) is compacted into
/// `definitions.json` once it would grow past the file's size, but never
/// below this many bytes, so that a small file is not rewritten every few
/// durable declares (a queue declare's record is about 30 bytes plus its
/// name and arguments).
pub(crate) const DEFINITIONS_LOG_MIN_BYTES: u64 = 64 * 1024;
/// The definitions log is extended with zeros this many bytes at a time
/// (and synced), so that an append overwrites bytes the file already has:
/// its fdatasync then flushes the record's page alone, without the inode
/// (the file's size) and the filesystem journal's commit a growing file
/// needs, which costs a durable declare more than the record does.
pub(crate) const DEFINITIONS_LOG_PREALLOCATE_BYTES: u64 = 64 * 1024;

/// RabbitMQ's management port: the management API's default listener.
pub const MANAGEMENT_PORT: u16 = 15672;
/// rabbitmq_prometheus's port: the Prometheus endpoint's default listener.
pub const PROMETHEUS_PORT: u16 = 15692;
/// Control-plane requests waiting for one shard: past it, the management
/// API answers 503 rather than pile requests up on a shard that does not
/// drain them.
pub(crate) const CONTROL_REQUESTS_MAX: usize = 1024;
/// Control-plane requests a shard answers per tick, so that a burst of
/// API calls cannot take a saturated shard's tick for itself.
pub(crate) const CONTROL_REQUESTS_PER_TICK: usize = 64;
/// Control-plane requests a busy shard answers per reactor turn besides
/// its tick (see `shard`'s flusher): enough for a list's one question,
/// few enough that a burst of API calls cannot take the turn.
pub(crate) const CONTROL_REQUESTS_PER_TURN: usize = 4;
/// How long the management API waits for a shard's answer before it
/// answers 503.
pub(crate) const CONTROL_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Trace log records each shard may have waiting for the trace writer
/// thread: past this a shard drops a record (and counts it) rather than
/// wait for a file.
pub(crate) const TRACE_WRITER_QUEUE_MAX: usize = 16_384;
/// At most one log line per shard per interval says that trace log
/// records were dropped.
pub(crate) const TRACE_DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The trace writer's buffer per open trace log file, written out
/// whenever the writer has nothing more to read.
pub(crate) const TRACE_FILE_BUFFER_BYTES: usize = 64 << 10;
/// A trace's name becomes its file's name, `<name>.log`: at most 255 bytes.
pub(crate) const TRACE_NAME_LEN_MAX: usize = 251;
/// RabbitMQ's default and largest `page_size` for paged lists.
pub(crate) const MANAGEMENT_PAGE_SIZE: usize = 100;
pub(crate) const MANAGEMENT_PAGE_SIZE_MAX: usize = 500;
/// The largest request body the management API reads (a definitions
/// import): RabbitMQ's default `management.http_max_body_size` (20 MiB).
pub(crate) const MANAGEMENT_BODY_SIZE_MAX: usize = 20 << 20;
/// Messages one "get messages" request may take.
pub(crate) const MANAGEMENT_GET_COUNT_MAX: u32 = 10_000;
/// How long the management API trusts credentials shard 0 accepted
/// before it asks again (a changed password or tag takes this long).
pub(crate) const MANAGEMENT_AUTH_CACHE: Duration = Duration::from_secs(1);
/// Accepted credentials remembered at once; past it, all are forgotten.
pub(crate) const MANAGEMENT_AUTH_CACHE_ENTRIES_MAX: usize = 1024;
/// Rates are computed over readings at least this far apart.
pub(crate) const MANAGEMENT_RATE_SAMPLE_MIN: Duration = Duration::from_secs(1);
/// How long an HTTPS client of the management API or of /metrics has to
/// finish its TLS handshake: RabbitMQ's `ssl_handshake_timeout` (5 s).
pub(crate) const HTTPS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// TLS handshakes one HTTPS listener runs at once; past it, accepting
/// waits, so that clients stalling mid-handshake cannot pile up sockets.
pub(crate) const HTTPS_HANDSHAKES_MAX: usize = 256;
/// How long an HTTPS listener pauses after a failed accept (out of file
/// descriptors, typically) before it tries again.
pub(crate) const HTTPS_ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What `warren` was started with; see `src/bin/warren.rs` for the flags.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub cpus: Option<Vec<usize>>,
    pub default_user: Option<(String, String)>,
    /// A RabbitMQ definitions export to import at start (`--definitions`).
    pub definitions_import: Option<PathBuf>,
    pub frame_size_max: u32,
    pub channel_max: u16,
    pub heartbeat_s: u16,
    /// `--max-message-size`: the largest body a publish may announce.
    pub message_size_max: u64,
    /// `--vm-memory-high-watermark`: above it, publishers are blocked.
    pub memory_high_watermark: MemoryWatermark,
    /// `--disk-free-limit`: below it on the data directory's disk, too.
    pub disk_free_limit: DiskFreeLimit,
    /// Bytes per message store segment file (`--segment-size`).
    pub segment_size: u64,
    /// `--queue-window`: ready bytes a queue keeps in memory.
    pub queue_window_bytes: u64,
    /// `--shard-window`: bytes all queues of a shard keep in memory.
    pub shard_window_bytes: u64,
    /// `--spin-before-park-us`: how long an idle shard polls before it
    /// sleeps in io_uring (zero: it sleeps at once).
    pub spin_before_park: Duration,
    /// `--mailbox-interval-us`: the least time between two batches a shard
    /// sends one peer, unless the later one is full (`MAILBOX_BATCH_FULL`).
    /// Zero: a batch goes at the end of every reactor turn.
    pub mailbox_interval: Duration,
    /// `--queue-leader-locator`: which shard a new queue lives on, unless
    /// its arguments say otherwise.
    pub queue_leader_locator: QueueLeaderLocator,
    /// For tests and benchmarks only (`WARREN_TEST_PLACEMENT`): see
    /// `PlacementTest`. None in any real use.
    pub placement_test: Option<PlacementTest>,
    /// For tests only (`SYNC_DELAY_TEST_ENV`): added to every synced batch
    /// of the message store. None in any real use.
    pub sync_delay_test: Option<Duration>,
    /// `--management-listen`: where the management HTTP API listens; empty
    /// for none (`--no-management`).
    pub management_listen: Vec<SocketAddr>,
    /// `--prometheus-listen`: where /metrics is served; empty for none
    /// (`--no-prometheus`).
    pub prometheus_listen: Vec<SocketAddr>,
    /// amqps listeners and their files (`--tls-*`); None: no TLS.
    pub tls: Option<TlsConfig>,
    /// `--management-tls-listen`: the management API over HTTPS, with the
    /// `tls` files (RabbitMQ's `management.ssl`); needs `tls`.
    pub management_tls_listen: Vec<SocketAddr>,
    /// `--prometheus-tls-listen`: /metrics over HTTPS (RabbitMQ's
    /// `prometheus.ssl`); needs `tls`.
    pub prometheus_tls_listen: Vec<SocketAddr>,
}

/// TLS settings, after RabbitMQ's `listeners.ssl` and `ssl_options`.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// `--tls-listen`: the amqps addresses.
    pub listen: Vec<SocketAddr>,
    /// `--tls-cert`: the server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// `--tls-key`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `--tls-ca`: the CA certificates client certificates are verified against.
    pub ca: Option<PathBuf>,
    /// `--tls-verify-peer` (RabbitMQ's `verify = verify_peer`): ask clients
    /// for a certificate and verify the one they send.
    pub verify_peer: bool,
    /// `--tls-fail-if-no-peer-cert`: refuse clients that send none.
    pub fail_if_no_peer_cert: bool,
    /// `--tls-cert-login-from` (RabbitMQ's `ssl_cert_login_from`): where
    /// EXTERNAL takes the user name from.
    pub cert_login_from: CertLoginFrom,
}

/// RabbitMQ's `ssl_cert_login_from`, for the names warren reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertLoginFrom {
    /// The subject's common name (CN).
    #[default]
    CommonName,
    /// The first DNS subject alternative name (else the first e-mail one).
    SubjectAlternativeName,
}

impl std::str::FromStr for CertLoginFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<CertLoginFrom, String> {
        match s {
            "common_name" => Ok(CertLoginFrom::CommonName),
            "subject_alternative_name" | "subject_alt_name" => {
                Ok(CertLoginFrom::SubjectAlternativeName)
            }
            other => Err(format!(
                "{other:?}: expected common_name or subject_alternative_name"
            )),
        }
    }
}

/// Which shard a new queue lives on: RabbitMQ's `queue_leader_locator`,
/// with a shard in the place of a cluster node. A queue's
/// `x-queue-leader-locator` argument (quorum queues) or
/// `x-queue-master-locator` argument (classic queues, RabbitMQ 3.10)
/// overrides it for that queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueLeaderLocator {
    /// On the shard of the connection that declares it, RabbitMQ's default:
    /// an application whose consumers declare their queues (as PerfTest
    /// and most clients do) gets its deliveries and acks without a hop
    /// between shards. Measured in tuning.md ("Shards, placement and
    /// pinning").
    #[default]
    ClientLocal,
    /// Spread over the shards in turn, whatever the declaring connection.
    Balanced,
}

impl QueueLeaderLocator {
    /// Reads a locator's name as RabbitMQ reads it: `client-local` and
    /// `balanced`, and the deprecated `random` and `least-leaders` (and the
    /// classic queues' `min-masters`) as `balanced`. None for any other.
    pub fn from_name(name: &[u8]) -> Option<QueueLeaderLocator> {
        match name {
            b"client-local" => Some(QueueLeaderLocator::ClientLocal),
            b"balanced" | b"random" | b"least-leaders" | b"min-masters" => {
                Some(QueueLeaderLocator::Balanced)
            }
            _ => None,
        }
    }
}

impl std::str::FromStr for QueueLeaderLocator {
    type Err = String;
    fn from_str(s: &str) -> Result<QueueLeaderLocator, String> {
        QueueLeaderLocator::from_name(s.as_bytes())
            .ok_or_else(|| format!("{s:?}: expected client-local or balanced"))
    }
}

/// The environment variable that turns on `PlacementTest`, for tests and
/// benchmarks only: `WARREN_TEST_PLACEMENT=` (empty) makes every
/// connection.start name the shard that accepted the connection (server
/// property `warren_shard`), so that a client can reconnect until it
/// lands on the shard it wants (loadgen's hidden `--producer-shard` and
/// `--consumer-shard`); `WARREN_TEST_PLACEMENT=queue=N` also puts every
/// queue declared on shard N (modulo the shard count). Together they
/// force each placement of publisher, queue and consumer.
pub const PLACEMENT_TEST_ENV: &str = "WARREN_TEST_PLACEMENT";

/// Placement forced for tests and benchmarks (`PLACEMENT_TEST_ENV`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlacementTest {
    /// Every queue lives on this shard (modulo the shard count).
    pub queue_shard: Option<usize>,
}

impl PlacementTest {
    /// Reads `PLACEMENT_TEST_ENV`'s value: empty, or `queue=N`.
    pub fn parse(value: &str) -> Result<PlacementTest, String> {
        let mut placement = PlacementTest::default();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("queue", shard)) => {
                    placement.queue_shard = Some(shard.parse().map_err(|_| {
                        format!("{PLACEMENT_TEST_ENV}: queue={shard} is not a shard number")
                    })?)
                }
                _ => return Err(format!("{PLACEMENT_TEST_ENV}: cannot read {part:?}")),
            }
        }
        Ok(placement)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], AMQP_PORT))],
            data_dir: PathBuf::from("warren-data"),
            shards: 1,
            cpus: None,
            default_user: None,
            definitions_import: None,
            frame_size_max: FRAME_SIZE_MAX,
            channel_max: CHANNEL_MAX,
            heartbeat_s: HEARTBEAT_S,
            message_size_max: MESSAGE_SIZE_MAX,
            memory_high_watermark: MemoryWatermark::default(),
            disk_free_limit: DiskFreeLimit::default(),
            segment_size: SEGMENT_SIZE,
            queue_window_bytes: QUEUE_WINDOW_BYTES,
            shard_window_bytes: SHARD_WINDOW_BYTES,
            spin_before_park: Duration::ZERO,
            mailbox_interval: MAILBOX_INTERVAL,
            queue_leader_locator: QueueLeaderLocator::ClientLocal,
            placement_test: None,
            sync_delay_test: None,
            management_listen: Vec::new(),
            prometheus_listen: Vec::new(),
            tls: None,
            management_tls_listen: Vec::new(),
            prometheus_tls_listen: Vec::new(),
        }
    }
}

const _: () = assert!(FRAME_SIZE_MAX >= FRAME_SIZE_MIN);
const _: () = assert!(SEGMENT_SIZE >= SEGMENT_SIZE_MIN);
const _: () = assert!(READ_BUFFER_SIZE as u32 >= FRAME_SIZE_MAX);
const _: () = assert!(RECEIVE_BUFFER_SIZE_MIN < READ_BYTES_PER_TURN_MAX);
const _: () = assert!(MESSAGE_SIZE_MAX <= MESSAGE_SIZE_LIMIT);
const _: () = assert!(DELIVERY_OUTPUT_BYTES_RESUME < DELIVERY_OUTPUT_BYTES_MAX);
const _: () = assert!(LOGIN_FAILURE_DELAY.as_millis() < LOGIN_WAIT_MAX.as_millis());
const _: () = assert!(LOGIN_WAIT_MAX.as_millis() < HANDSHAKE_TIMEOUT.as_millis());
