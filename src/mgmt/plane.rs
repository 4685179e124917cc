//! The control plane as the management API sees it: one channel to each
//! shard, drained by the shard's tick, and an answer per request through a
//! oneshot channel (a tokio waker may be woken from a shard's thread; a
//! shard is never woken by this thread, it polls).

use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use crate::broker::control::{Control, ControlReply, ControlRequest};
use crate::config;
use crate::mgmt::error::ApiError;

#[derive(Clone)]
pub(crate) struct Plane {
    shards: Arc<Vec<Sender<Control>>>,
}

impl Plane {
    pub(crate) fn new(shards: Vec<Sender<Control>>) -> Plane {
        Plane {
            shards: Arc::new(shards),
        }
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sends `request` to `shard` and waits for its answer.
    pub(crate) async fn ask(
        &self,
        shard: usize,
        request: ControlRequest,
    ) -> Result<ControlReply, ApiError> {
        let receiver = self.send(shard, request)?;
        Self::answer(receiver).await
    }

    /// Asks every shard at once, and waits for every answer (in shard order).
    pub(crate) async fn ask_all(
        &self,
        request: impl Fn() -> ControlRequest,
    ) -> Result<Vec<ControlReply>, ApiError> {
        self.ask_each(|_| request()).await
    }

    /// Asks every shard at once, each its own question (by shard index),
    /// and waits for every answer (in shard order).
    pub(crate) async fn ask_each(
        &self,
        request: impl Fn(usize) -> ControlRequest,
    ) -> Result<Vec<ControlReply>, ApiError> {
        let mut waiting = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            waiting.push(self.send(shard, request(shard))?);
        }
        let mut replies = Vec::with_capacity(waiting.len());
        for receiver in waiting {
            replies.push(Self::answer(receiver).await?);
        }
        Ok(replies)
    }

    fn send(
        &self,
        shard: usize,
        request: ControlRequest,
    ) -> Result<tokio::sync::oneshot::Receiver<ControlReply>, ApiError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let control = Control {
            request,
            reply: Box::new(move |reply| {
                // The HTTP request may have gone meanwhile; nobody to tell.
                let _ = sender.send(reply);
            }),
            asked: std::time::Instant::now(),
        };
        let Some(channel) = self.shards.get(shard) else {
            return Err(ApiError::internal("no such shard"));
        };
        match channel.try_send(control) {
            Ok(()) => Ok(receiver),
            // A shard that does not drain its requests is stopping or
            // stuck: the API says so rather than pile requests up.
            Err(TrySendError::Full(_)) => Err(ApiError::unavailable("the broker is busy")),
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::unavailable("the broker is stopping"))
            }
        }
    }

    async fn answer(
        receiver: tokio::sync::oneshot::Receiver<ControlReply>,
    ) -> Result<ControlReply, ApiError> {
        match tokio::time::timeout(config::CONTROL_REPLY_TIMEOUT, receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ApiError::unavailable("the broker is stopping")),
            Err(_) => Err(ApiError::unavailable("the broker did not answer in time")),
        }
    }
}
