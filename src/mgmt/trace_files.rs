//! The trace writer: one thread (`warren-trace-writer`), never a shard,
//! that writes the records of rabbitmq_tracing-style trace log files to
//! `<data-dir>/traces/<name>.log` (mode 0600, appended to, as the plugin
//! appends).
//!
//! Each shard hands it `TraceEvent`s over a bounded channel of its own
//! (`config::TRACE_WRITER_QUEUE_MAX`), with `try_send`: a shard never
//! waits for the writer, and when the writer is behind the shard drops
//! the record and counts it (`broker::trace::FileTraces`). The
//! management API opens and closes traces over a command channel and
//! waits for the answer, so a trace it reports as started has its file.
//! Records are buffered and written when the writer has nothing more to
//! read, as the plugin flushes when its mailbox is empty.
//!
//! The file helpers (`list`, `read`, `delete`) serve /api/trace-files.
//! It imports `broker` (the event), `config` and the formats.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};
use tracing::{info, warn};

use crate::broker::trace::TraceEvent;
use crate::config;
use crate::mgmt::trace_format::{record, timestamp_now, TraceFormat};

/// What the management API asks of the writer.
pub(crate) enum Command {
    /// Opens (creates, or appends to) `file_name` for trace `id`.
    Open {
        id: u64,
        file_name: String,
        format: TraceFormat,
        max_payload_bytes: Option<u64>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Writes out what trace `id` has, and forgets it.
    Close {
        id: u64,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// The management API's handle on the writer thread.
pub(crate) struct TraceWriter {
    pub(crate) commands: Sender<Command>,
    /// One channel per shard, in shard order.
    pub(crate) events: Vec<Sender<TraceEvent>>,
}

impl TraceWriter {
    /// Starts the writer thread for `shard_count` shards.
    pub(crate) fn start(
        directory: PathBuf,
        node: String,
        shard_count: usize,
    ) -> std::io::Result<TraceWriter> {
        let (commands, command_receiver) = crossbeam_channel::unbounded();
        let (events, receivers): (Vec<_>, Vec<_>) = (0..shard_count)
            .map(|_| crossbeam_channel::bounded(config::TRACE_WRITER_QUEUE_MAX))
            .unzip();
        std::thread::Builder::new()
            .name("warren-trace-writer".into())
            .spawn(move || {
                Writer {
                    directory,
                    node,
                    traces: HashMap::new(),
                    files: HashMap::new(),
                    scratch: Vec::new(),
                }
                .run(command_receiver, receivers)
            })?;
        Ok(TraceWriter { commands, events })
    }
}

struct Sink {
    file_name: String,
    format: TraceFormat,
    max_payload_bytes: Option<u64>,
}

struct OpenFile {
    writer: BufWriter<File>,
    /// Traces writing to it: two vhosts' traces of one name share a file,
    /// as they do in RabbitMQ.
    users: usize,
    dirty: bool,
    /// A write failed: said once in the log, not per record.
    failed: bool,
}

struct Writer {
    directory: PathBuf,
    node: String,
    traces: HashMap<u64, Sink>,
    files: HashMap<String, OpenFile>,
    scratch: Vec<u8>,
}

impl Writer {
    fn run(mut self, commands: Receiver<Command>, events: Vec<Receiver<TraceEvent>>) {
        loop {
            let mut select = Select::new();
            select.recv(&commands);
            for receiver in &events {
                select.recv(receiver);
            }
            let operation = select.select();
            let index = operation.index();
            if index == 0 {
                match operation.recv(&commands) {
                    Ok(command) => self.command(command, &events),
                    // The management API is gone: so is the broker.
                    Err(_) => return,
                }
            } else if let Ok(event) = operation.recv(&events[index - 1]) {
                self.write(&event);
            }
            self.drain(&events);
            self.flush();
        }
    }

    /// Writes everything the shards have handed over so far.
    fn drain(&mut self, events: &[Receiver<TraceEvent>]) {
        loop {
            let mut any = false;
            for receiver in events {
                // A bounded round per channel, so that one busy shard
                // does not hold back the others' records.
                for _ in 0..config::TRACE_WRITER_QUEUE_MAX {
                    match receiver.try_recv() {
                        Ok(event) => {
                            self.write(&event);
                            any = true;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    fn command(&mut self, command: Command, events: &[Receiver<TraceEvent>]) {
        match command {
            Command::Open {
                id,
                file_name,
                format,
                max_payload_bytes,
                done,
            } => {
                let opened = self.open(&file_name).map_err(|e| e.to_string());
                if let Err(error) = &opened {
                    warn!(file = %file_name, error = %error, "cannot open the trace log file");
                } else {
                    info!(file = %file_name, format = format.name(), "trace log file opened");
                    self.traces.insert(
                        id,
                        Sink {
                            file_name,
                            format,
                            max_payload_bytes,
                        },
                    );
                }
                let _ = done.send(opened);
            }
            Command::Close { id, done } => {
                // What the shards handed over before the trace stopped
                // still goes to its file.
                self.drain(events);
                self.flush();
                if let Some(sink) = self.traces.remove(&id) {
                    let last = self.files.get_mut(&sink.file_name).is_some_and(|file| {
                        file.users -= 1;
                        file.users == 0
                    });
                    if last {
                        self.files.remove(&sink.file_name);
                        info!(file = %sink.file_name, "trace log file closed");
                    }
                }
                let _ = done.send(());
            }
        }
    }

    fn open(&mut self, file_name: &str) -> std::io::Result<()> {
        if let Some(file) = self.files.get_mut(file_name) {
            file.users += 1;
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.directory)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.directory.join(file_name))?;
        self.files.insert(
            file_name.to_string(),
            OpenFile {
                writer: BufWriter::with_capacity(config::TRACE_FILE_BUFFER_BYTES, file),
                users: 1,
                dirty: false,
                failed: false,
            },
        );
        Ok(())
    }

    fn write(&mut self, event: &TraceEvent) {
        let timestamp = timestamp_now();
        for id in &event.traces {
            let Some(sink) = self.traces.get(id) else {
                continue;
            };
            let Some(file) = self.files.get_mut(&sink.file_name) else {
                continue;
            };
            self.scratch.clear();
            record(
                sink.format,
                event,
                &self.node,
                &timestamp,
                sink.max_payload_bytes,
                &mut self.scratch,
            );
            match file.writer.write_all(&self.scratch) {
                Ok(()) => file.dirty = true,
                Err(error) => write_failed(&sink.file_name, file, &error),
            }
        }
    }

    fn flush(&mut self) {
        for (name, file) in self.files.iter_mut().filter(|(_, f)| f.dirty) {
            file.dirty = false;
            if let Err(error) = file.writer.flush() {
                write_failed(name, file, &error);
            }
        }
    }
}

fn write_failed(name: &str, file: &mut OpenFile, error: &std::io::Error) {
    if !file.failed {
        warn!(file = %name, error = %error, "cannot write to the trace log file");
        file.failed = true;
    }
}

/// Whether `name` can be a file of the trace directory: one path
/// component, not `.` or `..` (RabbitMQ refuses other paths too).
pub(crate) fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255
}

/// The regular files of the trace directory, by name, with their sizes.
pub(crate) fn list(directory: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    let mut files: Vec<(String, u64)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let metadata = entry.metadata().ok()?;
            metadata.is_file().then(|| {
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    metadata.len(),
                )
            })
        })
        .collect();
    files.sort();
    files
}
