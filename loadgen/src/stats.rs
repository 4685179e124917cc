//! Statistics: per-executor counters and histograms (one executor's tasks share them
//! through an `Rc<RefCell<..>>`, so there are no locks and no atomics), the events
//! executors send to the main thread over crossbeam, and the results each producer
//! and consumer hands back at the end.

use hdrhistogram::Histogram;

use crate::tracker::SeqBits;

/// Latencies are recorded in microseconds, from 1 µs to one hour, 3 significant digits.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// Records a latency given in nanoseconds.
#[inline]
pub fn record_ns(histogram: &mut Histogram<u64>, latency_ns: u64) {
    histogram.saturating_record((latency_ns / 1_000).max(1));
}

/// Cumulative message counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub returned: u64,
    pub received: u64,
    pub redelivered: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.published += o.published;
        self.confirmed += o.confirmed;
        self.nacked += o.nacked;
        self.returned += o.returned;
        self.received += o.received;
        self.redelivered += o.redelivered;
    }
}

/// What the tasks of one executor have measured.
pub struct ExecStats {
    pub counters: Counters,
    /// End-to-end and confirm latency since the last tick, for the progress line.
    pub e2e_interval: Histogram<u64>,
    pub confirm_interval: Histogram<u64>,
    /// The whole run, for the summary.
    pub e2e_total: Histogram<u64>,
    pub confirm_total: Histogram<u64>,
    /// How far behind schedule rate-limited producers were, at most, since the last tick.
    pub behind_ns_max: u64,
}

impl Default for ExecStats {
    fn default() -> Self {
        ExecStats {
            counters: Counters::default(),
            e2e_interval: new_histogram(),
            confirm_interval: new_histogram(),
            e2e_total: new_histogram(),
            confirm_total: new_histogram(),
            behind_ns_max: 0,
        }
    }
}

impl ExecStats {
    #[inline]
    pub fn record_e2e(&mut self, latency_ns: u64) {
        record_ns(&mut self.e2e_interval, latency_ns);
        record_ns(&mut self.e2e_total, latency_ns);
    }

    #[inline]
    pub fn record_confirm(&mut self, latency_ns: u64) {
        record_ns(&mut self.confirm_interval, latency_ns);
        record_ns(&mut self.confirm_total, latency_ns);
    }
}

/// One producer's account at the end of the run.
#[derive(Debug)]
pub struct ProducerResult {
    pub id: u32,
    pub sent: u64,
    /// Sequence numbers the broker nacked, returned, or never confirmed.
    pub nacked: Vec<u64>,
    pub returned: Vec<u64>,
    pub unconfirmed: Vec<u64>,
    pub expected_queue: Option<usize>,
    /// Messages that were due by the end (rate-limited runs) but never sent.
    pub due_unsent: u64,
}

/// One consumer connection's sequence records, per (producer id, queue index).
#[derive(Debug)]
pub struct ConsumerResult {
    pub records: Vec<(u32, usize, SeqBits)>,
    /// Bodies too short to be loadgen's, or from a producer id not in this run.
    pub foreign: u64,
}

pub enum Event {
    SetupDone(Result<Vec<String>, String>),
    ConsumerReady,
    ProducerDone,
    Tick {
        executor: usize,
        counters: Counters,
        e2e: Box<Histogram<u64>>,
        confirm: Box<Histogram<u64>>,
        behind_ns_max: u64,
    },
    ProducerFinal(ProducerResult),
    ConsumerFinal(ConsumerResult),
    ExecutorFinal {
        e2e: Box<Histogram<u64>>,
        confirm: Box<Histogram<u64>>,
    },
    Error(String),
}
