//! The shard as its sockets see it: `net::connection::ConnectionHost` for the
//! shard's state, each call one short borrow of it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;

use crate::broker::connection::Input;
use crate::broker::ShardState;
use crate::metadata::auth::External;
use crate::model::ids::ConnId;
use crate::net::connection::{ConnectionHost, Next, Opened, Output};
use crate::net::tls::TlsPeer;

/// A handle on the shard's state for its connections' socket tasks.
#[derive(Clone)]
pub(crate) struct ShardHost(pub Rc<RefCell<ShardState>>);

impl ConnectionHost for ShardHost {
    type Id = ConnId;

    fn open(&self, peer: SocketAddr, local: SocketAddr, tls: Option<TlsPeer>) -> Opened<ConnId> {
        let external = match tls {
            None => External::NotTls,
            Some(TlsPeer {
                verify_peer: false, ..
            }) => External::Unsafe,
            Some(TlsPeer {
                has_cert: false, ..
            }) => External::NoCertificate,
            Some(TlsPeer {
                cert_login: None, ..
            }) => External::NoName,
            Some(TlsPeer {
                cert_login: Some(name),
                ..
            }) => External::User(name),
        };
        let (id, reader, writer) = self.0.borrow_mut().open_connection((peer, local), external);
        Opened { id, reader, writer }
    }

    fn input(&self, id: ConnId, buf: &mut BytesMut) -> Next {
        match self.0.borrow_mut().connection_input(id, buf) {
            Input::NeedMore => Next::Read,
            // connection_input carries out handed-over effects itself; were
            // one to come through, yielding and handing the buffer over
            // again is what the reader would do anyway.
            Input::Yield | Input::HandOver => Next::Yield,
            Input::Paused => Next::Paused,
            Input::Closed => Next::Closed,
        }
    }

    fn take_output(&self, id: ConnId, out: &mut BytesMut) -> Output {
        match self.0.borrow_mut().take_output(id, out) {
            Some(false) => Output::Open,
            // A connection that is gone counts as closed.
            Some(true) | None => Output::Closed,
        }
    }

    fn must_wait_to_read(&self, id: ConnId) -> bool {
        self.0.borrow().should_stop_reading(id)
    }

    fn in_flow(&self, id: ConnId) -> bool {
        self.0.borrow_mut().in_flow(id)
    }

    fn leave_flow(&self, id: ConnId) {
        self.0.borrow_mut().leave_flow(id);
    }

    fn is_closed(&self, id: ConnId) -> bool {
        self.0.borrow().connection_is_closed(id)
    }

    fn closed_by_client(&self, id: ConnId) -> bool {
        self.0.borrow().connection_closed_by_client(id)
    }

    fn lost(&self, id: ConnId) {
        self.0.borrow_mut().connection_lost(id);
    }

    fn remove(&self, id: ConnId) {
        self.0.borrow_mut().remove_connection(id);
    }
}
