//! Driving load at a gateway: *what run* ([`spec`]: a [`spec::LoadSpec`] and its defaults),
//! *when* to send ([`schedule`]: open-loop arrival profiles), *what* to send ([`traffic`]:
//! payment-like transactions), and the [`driver`] that sends them over unary calls or
//! long-lived SubmitStreams and accounts for every one of them; [`throttle`] is the
//! client-side adaptive throttling a cooperating client adds (`--client-throttle`);
//! [`signal`] what a run tells its caller as outcomes arrive; [`recorder`] where every
//! outcome goes on the hot path.
//!
//! Kept apart from the lab and the reports so the measuring instrument can be read (and
//! tested, against a port-0 gateway) without the meshes it is pointed at.

pub mod driver;
pub mod recorder;
pub mod schedule;
pub mod signal;
pub mod spec;
pub mod stalls;
pub mod throttle;
pub mod traffic;
