//! Failed logins slow down the address they came from, on this shard:
//! once a login from an address has failed, that address's logins are
//! answered at most one per `LOGIN_FAILURE_DELAY`, until
//! `LOGIN_FAILURE_MEMORY` has passed without a failure. Other addresses
//! are not slowed at all, and nothing here sleeps: a connection whose
//! login must wait is paused, and the shard's tick lets it go (see
//! `Connection::tick`). RabbitMQ answers every login at once; this is a
//! deliberate difference, against password guessing.
//!
//! Memory is bounded: at most `LOGIN_FAILURE_ADDRESSES_MAX` addresses are
//! remembered, the expired first to go, then the oldest failure.

use std::net::IpAddr;
use std::time::Instant;

use crate::config::{LOGIN_FAILURE_ADDRESSES_MAX, LOGIN_FAILURE_DELAY, LOGIN_FAILURE_MEMORY};
use crate::util::hash::FastMap;

#[derive(Debug, Clone, Copy)]
struct Address {
    last_failure: Instant,
    /// The earliest time the next login from this address is answered.
    next_answer: Instant,
}

/// One shard's memory of failed logins.
#[derive(Debug, Default)]
pub struct LoginDelays {
    addresses: FastMap<IpAddr, Address>,
}

impl LoginDelays {
    /// When a login from `ip` arriving `now` may be answered: None for at
    /// once. Each answer held takes its turn, one `LOGIN_FAILURE_DELAY`
    /// after the one before.
    pub fn answer_at(&mut self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let address = self.addresses.get_mut(&ip)?;
        if now.duration_since(address.last_failure) >= LOGIN_FAILURE_MEMORY {
            self.addresses.remove(&ip);
            return None;
        }
        let at = address.next_answer.max(now);
        address.next_answer = at + LOGIN_FAILURE_DELAY;
        (at > now).then_some(at)
    }

    /// A login from `ip` failed `now`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if !self.addresses.contains_key(&ip) && self.addresses.len() >= LOGIN_FAILURE_ADDRESSES_MAX
        {
            self.make_room(now);
        }
        let address = self.addresses.entry(ip).or_insert(Address {
            last_failure: now,
            next_answer: now,
        });
        address.last_failure = now;
        address.next_answer = address.next_answer.max(now + LOGIN_FAILURE_DELAY);
    }

    fn make_room(&mut self, now: Instant) {
        self.addresses
            .retain(|_, a| now.duration_since(a.last_failure) < LOGIN_FAILURE_MEMORY);
        if self.addresses.len() >= LOGIN_FAILURE_ADDRESSES_MAX {
            let oldest = self
                .addresses
                .iter()
                .min_by_key(|(_, a)| a.last_failure)
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                self.addresses.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn an_address_without_failures_is_answered_at_once() {
        let mut delays = LoginDelays::default();
        let now = Instant::now();
        assert_eq!(delays.answer_at(ip(1), now), None);
        delays.failed(ip(2), now);
        assert_eq!(delays.answer_at(ip(1), now), None);
    }

    #[test]
    fn after_a_failure_logins_take_turns_one_delay_apart() {
        let mut delays = LoginDelays::default();
        let t0 = Instant::now();
        delays.failed(ip(1), t0);
        let d = LOGIN_FAILURE_DELAY;
        assert_eq!(delays.answer_at(ip(1), t0), Some(t0 + d));
        assert_eq!(delays.answer_at(ip(1), t0), Some(t0 + 2 * d));
        // Later than its turn: answered at once, and the next waits a delay.
        let late = t0 + 10 * d;
        assert_eq!(delays.answer_at(ip(1), late), None);
        assert_eq!(delays.answer_at(ip(1), late), Some(late + d));
    }

    #[test]
    fn an_address_is_forgotten_after_the_memory() {
        let mut delays = LoginDelays::default();
        let t0 = Instant::now();
        delays.failed(ip(1), t0);
        let later = t0 + LOGIN_FAILURE_MEMORY + Duration::from_millis(1);
        assert_eq!(delays.answer_at(ip(1), later), None);
        assert_eq!(delays.len(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let mut delays = LoginDelays::default();
        let t0 = Instant::now();
        for n in 0..(LOGIN_FAILURE_ADDRESSES_MAX as u32 + 100) {
            delays.failed(ip(n), t0 + Duration::from_micros(n as u64));
        }
        assert_eq!(delays.len(), LOGIN_FAILURE_ADDRESSES_MAX);
        // The oldest went first.
        assert_eq!(delays.answer_at(ip(0), t0), None);
    }
}
