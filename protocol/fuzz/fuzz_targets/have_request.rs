//! Untrusted bytes as a `/swarm-dl/have/6` request: decoding and validation must never panic
//! nor allocate past the frame limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarm_protocol::wire::{HaveRequest, MAX_HAVE_REQUEST, decode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_frame::<HaveRequest>(data, MAX_HAVE_REQUEST) {
        let _ = req.validate();
    }
});
