//! Untrusted bytes as `/swarm-dl/meta/1` request and response frames (listings validated).
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarm_protocol::wire::{MAX_META_REQUEST, MAX_META_RESPONSE, MetaRequest, MetaResponse, decode_frame};

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame::<MetaRequest>(data, MAX_META_REQUEST);
    if let Ok(MetaResponse { listing: Some(l) }) = decode_frame::<MetaResponse>(data, MAX_META_RESPONSE) {
        let _ = l.validate();
    }
});
