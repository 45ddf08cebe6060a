//! Deliberate misbehaviour, for tests of hostile peers only.
//!
//! Compiled in with the cargo feature `test-hooks`, which the tests crate enables and nothing
//! else does: in a release build [`Hooks`] is empty, every question below answers "no", and no
//! code that could serve wrong bytes or forge a record is in the binary.

/// How a node under test misbehaves when serving.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeFault {
    /// Serve bytes that do not match the (honest) records.
    CorruptBytes,
    /// Serve the same wrong bytes, under records signed for the wrong bytes.
    ForgeRecords,
    /// Send a chunk's header and first slice, then nothing more (a peer that hangs).
    Stall,
    /// Drop the first [`DROPPED_STREAMS`] chunk streams opened to it unanswered, as a node does
    /// whose queue of new streams is full (an honest holder under load).
    DropStreams,
    /// Close the first [`DROPPED_STREAMS`] chunk streams opened to it after the first slice of
    /// a chunk (a connection that breaks under load).
    CutStreams,
    /// Never answer a question about what it holds (a peer too busy to answer, or a hostile one
    /// that makes its askers wait for the request timeout).
    WithholdAvailability,
}

/// How many streams [`ServeFault::DropStreams`] drops (and [`ServeFault::CutStreams`] cuts).
#[cfg(feature = "test-hooks")]
pub const DROPPED_STREAMS: u32 = 12;

/// The misbehaviour a node was built with: none, outside tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    /// What to do wrong.
    #[cfg(feature = "test-hooks")]
    pub fault: Option<ServeFault>,
}

impl Hooks {
    /// Flip the first byte of every chunk served ([`corrupt`]).
    pub fn corrupts(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return matches!(self.fault, Some(ServeFault::CorruptBytes | ServeFault::ForgeRecords));
        #[cfg(not(feature = "test-hooks"))]
        false
    }

    /// Sign records for the corrupted bytes instead of the true ones.
    pub fn forges(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.fault == Some(ServeFault::ForgeRecords);
        #[cfg(not(feature = "test-hooks"))]
        false
    }

    /// Hang after the first slice of a chunk.
    pub fn stalls(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.fault == Some(ServeFault::Stall);
        #[cfg(not(feature = "test-hooks"))]
        false
    }
}

impl Hooks {
    /// Leaves availability questions unanswered.
    pub fn withholds_availability(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.fault == Some(ServeFault::WithholdAvailability);
        #[cfg(not(feature = "test-hooks"))]
        false
    }

    /// Closes the `n`-th chunk stream opened to this node (counting from 0) mid-chunk.
    pub fn cuts_stream(&self, n: u32) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.fault == Some(ServeFault::CutStreams) && n < DROPPED_STREAMS;
        #[cfg(not(feature = "test-hooks"))]
        {
            let _ = n;
            false
        }
    }

    /// Drops the `n`-th chunk stream opened to this node (counting from 0) unanswered.
    pub fn drops_stream(&self, n: u32) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.fault == Some(ServeFault::DropStreams) && n < DROPPED_STREAMS;
        #[cfg(not(feature = "test-hooks"))]
        {
            let _ = n;
            false
        }
    }
}

/// The byte a faulty node flips: the first of every chunk.
pub fn corrupt(chunk_start: &mut [u8]) {
    if let Some(b) = chunk_start.first_mut() {
        *b ^= 0xff;
    }
}
