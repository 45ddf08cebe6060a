//! Every integration test of swarm-dl, in one test binary (`cargo nextest run -p swarm-tests`):
//! one module per area. One binary links once; as twelve binaries, each linking libp2p, tokio and
//! the node, they took about a minute more of every CI run.

mod cli;
mod cluster;
mod endpoint;
mod faults;
mod hub_serve;
mod interop;
mod netns;
mod preheat;
mod resume;
mod security;
mod simulation;
mod swarm;
