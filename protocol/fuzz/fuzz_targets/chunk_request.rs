//! Untrusted bytes as a `/swarm-dl/chunk/1` request frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarm_protocol::wire::{ChunkRequest, MAX_CHUNK_FRAME, decode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_frame::<ChunkRequest>(data, MAX_CHUNK_FRAME) {
        let _ = req.chunk_len();
    }
});
