//! The control socket: how `certrotd status`, `rotate` and `history` talk to the running daemon.
//!
//! [`proto`] is the protocol's messages (two serde enums of plain wire types); [`frame`] how they
//! travel (length-prefixed JSON frames with a size cap);
//! [`server`] binds the socket with its mode set before `listen` and answers requests through a
//! [`server::Handler`] the daemon implements, deciding by the peer's credentials who may change
//! state, with `admission` bounding the connections each user may hold; [`client`] is the other
//! end.

mod admission;
pub mod client;
pub mod frame;
pub mod proto;
pub mod proto_ca;
pub mod server;
