//! Failed logins slow down the address they came from, on this shard:
//! once a login from an address has failed, that address's logins are
//! answered at most one per `LOGIN_FAILURE_DELAY`, until
//! `LOGIN_FAILURE_MEMORY` has passed without a failure. Other addresses
//! are not slowed at all, and nothing here sleeps: a connection whose
//! login must wait is paused, and the shard's tick lets it go (see
//! `Connection::tick`). RabbitMQ answers every login at once; this is a
//! deliberate difference, against password guessing.
//!
//! A login whose turn is more than `LOGIN_WAIT_MAX` away is refused at
//! once without its credentials being checked, and takes no turn.
//!
//! Memory is bounded: at most `LOGIN_FAILURE_ADDRESSES_MAX` addresses are
//! remembered, the expired first to go, then the oldest failure.

use std::net::IpAddr;
use std::time::Instant;

use crate::config::{
    LOGIN_FAILURE_ADDRESSES_MAX, LOGIN_FAILURE_DELAY, LOGIN_FAILURE_MEMORY, LOGIN_WAIT_MAX,
};
use crate::util::hash::FastMap;

#[derive(Debug, Clone, Copy)]
struct Address {
    last_failure: Instant,
    /// The earliest time the next login from this address is answered.
    next_answer: Instant,
}

/// When a login is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginTurn {
    Now,
    At(Instant),
    /// Too many logins wait already: refused without a check.
    Refused,
}

/// One shard's memory of failed logins.
#[derive(Debug, Default)]
pub(crate) struct LoginDelays {
    addresses: FastMap<IpAddr, Address>,
}

impl LoginDelays {
    /// When a login from `ip` arriving `now` is answered. Each answer held
    /// takes its turn, one `LOGIN_FAILURE_DELAY` after the one before.
    pub(crate) fn turn(&mut self, ip: IpAddr, now: Instant) -> LoginTurn {
        let Some(address) = self.addresses.get_mut(&ip) else {
            return LoginTurn::Now;
        };
        if now.duration_since(address.last_failure) >= LOGIN_FAILURE_MEMORY {
            self.addresses.remove(&ip);
            return LoginTurn::Now;
        }
        let at = address.next_answer.max(now);
        if at.duration_since(now) > LOGIN_WAIT_MAX {
            return LoginTurn::Refused;
        }
        address.next_answer = at + LOGIN_FAILURE_DELAY;
        if at > now {
            LoginTurn::At(at)
        } else {
            LoginTurn::Now
        }
    }

    /// A login from `ip` failed `now`.
    pub(crate) fn failed(&mut self, ip: IpAddr, now: Instant) {
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
        assert_eq!(delays.turn(ip(1), now), LoginTurn::Now);
        delays.failed(ip(2), now);
        assert_eq!(delays.turn(ip(1), now), LoginTurn::Now);
    }

    #[test]
    fn after_a_failure_logins_take_turns_one_delay_apart() {
        let mut delays = LoginDelays::default();
        let t0 = Instant::now();
        delays.failed(ip(1), t0);
        let d = LOGIN_FAILURE_DELAY;
        assert_eq!(delays.turn(ip(1), t0), LoginTurn::At(t0 + d));
        assert_eq!(delays.turn(ip(1), t0), LoginTurn::At(t0 + 2 * d));
        // Later than its turn: answered at once, and the next waits a delay.
        let late = t0 + 10 * d;
        assert_eq!(delays.turn(ip(1), late), LoginTurn::Now);
        assert_eq!(delays.turn(ip(1), late), LoginTurn::At(late + d));
    }

    #[test]
    fn logins_past_the_longest_wait_are_refused_and_book_no_turn() {
        let mut delays = LoginDelays::default();
        let t0 = Instant::now();
        delays.failed(ip(1), t0);
        let mut booked = 0;
        for _ in 0..1000 {
            match delays.turn(ip(1), t0) {
                LoginTurn::At(at) => {
                    assert!(at.duration_since(t0) <= LOGIN_WAIT_MAX);
                    booked += 1;
                }
                LoginTurn::Refused => {}
                LoginTurn::Now => panic!("answered at once after a failure"),
            }
        }
        let most = (LOGIN_WAIT_MAX.as_millis() / LOGIN_FAILURE_DELAY.as_millis()) as usize;
        assert_eq!(booked, most);
        // Once the turns have passed, logins are answered again.
        let later = t0 + LOGIN_WAIT_MAX + 2 * LOGIN_FAILURE_DELAY;
        assert_eq!(delays.turn(ip(1), later), LoginTurn::Now);
    }

    #[test]
    fn an_address_is_forgotten_after_the_memory() {
        let mut delays = LoginDelays::default();
        let t0 = Instant::now();
        delays.failed(ip(1), t0);
        let later = t0 + LOGIN_FAILURE_MEMORY + Duration::from_millis(1);
        assert_eq!(delays.turn(ip(1), later), LoginTurn::Now);
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
        assert_eq!(delays.turn(ip(0), t0), LoginTurn::Now);
    }
}
