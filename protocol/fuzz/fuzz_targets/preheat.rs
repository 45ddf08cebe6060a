//! Untrusted bytes as `/swarm-dl/preheat/1` request and reply frames (jobs validated).
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarm_protocol::wire::{MAX_PREHEAT_FRAME, MAX_PREHEAT_REPLY, PreheatReply, PreheatRequest, decode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(PreheatRequest::Start(job)) = decode_frame::<PreheatRequest>(data, MAX_PREHEAT_FRAME) {
        let _ = job.validate();
    }
    let _ = decode_frame::<PreheatReply>(data, MAX_PREHEAT_REPLY);
});
