//! Untrusted bytes as a `/swarm-dl/chunk/1` response header frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarm_protocol::wire::{ChunkHeader, MAX_CHUNK_FRAME, decode_frame};

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame::<ChunkHeader>(data, MAX_CHUNK_FRAME);
});
