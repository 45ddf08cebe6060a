//! # swarm-protocol: the rules every swarm-dl node agrees on without talking
//!
//! This crate is the specification in code. It holds plain types and pure functions only:
//! no I/O, no async runtime, no networking. Everything here must give the same answer on
//! every node, on every platform, for ever (or until the version number below changes).
//!
//! ## Goals
//! - **Identity**: a file is named by the Hub's ETag — the LFS sha256 (64 hex) for large files,
//!   the git blob sha1 (40 hex) for regular files ([`hash::Etag`]). That string is also the blob's
//!   file name in the Hugging Face cache.
//! - **Chunking**: a file is cut into fixed-size chunks whose size is a pure function of the file's
//!   length ([`chunk::chunk_size_for`]), so every node cuts a file the same way without asking.
//! - **Integrity**: a [`manifest::ChunkManifest`] records the hash of every chunk of a file
//!   ([`hash::ChunkHash`], BLAKE3), so a chunk can be checked on its own, long before the whole
//!   file is there to be checked against the Hub's ETag. Nothing is trusted until it has been checked against one of the two.
//! - **Repo naming**: [`repo::RepoId`] and [`repo::RepoType`] validate ids the way the Hub does and map
//!   them to the cache folder names `huggingface_hub` uses.
//!
//! ## Non-goals
//! - Transport, discovery, scheduling, signing: those live in `swarm-node` (this crate fixes the
//!   bytes that are signed, not the crypto).
//! - Xet's content-defined chunks: a later step.
//!
//! ## Message kinds
//! - [`manifest::ChunkManifest`]: per file, its ETag, size, chunk size and chunk hashes. Written today
//!   as the resume state of a download; shipped to peers by the swarm (signed by the node that
//!   fetched the bytes from the Hub).
//! - [`wire`]: the peer protocols — `/swarm-dl/have/6` (which chunks a peer holds, with a signed
//!   chunk-hash record per chunk) and `/swarm-dl/chunk/1` (chunk bytes on a stream) — their frames,
//!   size limits, and the exact bytes a node signs to vouch for a chunk.
//!
//! - [`rendezvous`]: which node fetches which chunk from the Hub (and which member asks the Hub
//!   for a revision's listing), computed alike by every node without asking.
//! - [`control`]: the local control protocol between `swarm-dl get`/`status` and the `join` node
//!   of their cache, over a Unix socket: one JSON request a connection, decoded with bounds.
//!
//! ## Versioning
//! [`PROTOCOL_VERSION`] names the rules above. A change to the chunk-size rule or to a wire type is a
//! new version, because nodes that disagree on it would cut files differently.

pub mod chunk;
pub mod control;
pub mod hash;
pub mod manifest;
pub mod rendezvous;
pub mod repo;
pub mod wire;

/// Version of the rules in this crate (chunk-size rule, chunk hash, manifest layout). 2: chunk
/// hashes are BLAKE3 (they were sha256); manifests saved under version 1 are ignored.
pub const PROTOCOL_VERSION: u32 = 2;
