//! Direct exchange: a binding matches when its key equals the routing key.

use crate::util::hash::FastMap;

use crate::metadata::exchange::{Binding, Destination};
use warren_protocol::ShortStr;

#[derive(Debug, Default)]
pub(crate) struct DirectRouter {
    by_key: FastMap<ShortStr, Vec<Destination>>,
}

impl DirectRouter {
    pub(crate) fn bind(&mut self, binding: &Binding) {
        self.by_key
            .entry(binding.routing_key.clone())
            .or_default()
            .push(binding.destination.clone());
    }

    pub(crate) fn unbind(&mut self, binding: &Binding) {
        if let Some(destinations) = self.by_key.get_mut(binding.routing_key.as_str()) {
            if let Some(at) = destinations.iter().position(|d| d == &binding.destination) {
                destinations.swap_remove(at);
            }
            if destinations.is_empty() {
                self.by_key.remove(binding.routing_key.as_str());
            }
        }
    }

    pub(crate) fn route(&self, routing_key: &str, out: &mut Vec<Destination>) {
        if let Some(destinations) = self.by_key.get(routing_key) {
            out.extend(destinations.iter().cloned());
        }
    }
}
