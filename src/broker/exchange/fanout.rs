//! Fanout exchange: every binding matches, whatever the routing key.

use crate::metadata::exchange::{Binding, Destination};

#[derive(Debug, Default)]
pub(crate) struct FanoutRouter {
    destinations: Vec<Destination>,
}

impl FanoutRouter {
    pub(crate) fn bind(&mut self, binding: &Binding) {
        self.destinations.push(binding.destination.clone());
    }

    pub(crate) fn unbind(&mut self, binding: &Binding) {
        if let Some(at) = self
            .destinations
            .iter()
            .position(|d| d == &binding.destination)
        {
            self.destinations.swap_remove(at);
        }
    }

    pub(crate) fn route(&self, out: &mut Vec<Destination>) {
        out.extend(self.destinations.iter().cloned());
    }
}
