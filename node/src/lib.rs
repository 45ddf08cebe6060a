//! # swarm-node: the engine behind `swarm-dl`
//!
//! Owns everything that does I/O: talking to the Hub ([`hub`]), the Hugging Face cache on disk
//! ([`cache`]), partially downloaded files and their chunk state ([`store`]), the pipeline that
//! turns "this repo at this revision" into verified blobs ([`fetch`]), and the Hub-compatible HTTP
//! server used as a mirror and as the origin of every test ([`http`]).
//!
//! It must not parse command lines, print to stdout or install a tracing subscriber: that is the
//! binary's job (`cli/`). Errors are typed per module; the binary turns them into one sentence.

pub mod cache;
#[cfg(unix)]
pub mod control;
pub mod endpoint;
pub mod fetch;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod os;
pub mod rate;
pub mod schedule;
pub mod scheduler;
pub mod store;
pub mod swarm;
pub mod throttle;

pub use swarm_protocol as protocol;
