//! Fanout exchange: every binding matches, whatever the routing key.

use crate::metadata::exchange::{Binding, Destination};

#[derive(Debug, Default)]
pub struct FanoutRouter {
    destinations: Vec<Destination>,
}

impl FanoutRouter {
    pub fn bind(&mut self, binding: &Binding) {
        self.destinations.push(binding.destination.clone());
    }

    pub fn unbind(&mut self, binding: &Binding) {
        if let Some(at) = self
            .destinations
            .iter()
            .position(|d| d == &binding.destination)
        {
            self.destinations.swap_remove(at);
        }
    }

    pub fn route(&self, out: &mut Vec<Destination>) {
        out.extend(self.destinations.iter().cloned());
    }
}
