//! Request/response codecs (`/swarm-dl/have/6`, `/swarm-dl/meta/1`): length-prefixed bincode frames with the hard
//! limits of [`swarm_protocol::wire`], read without trusting the length prefix.

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use serde::{Serialize, de::DeserializeOwned};
use std::io;
use swarm_protocol::wire::{
    self, HaveRequest, HaveResponse, MAX_HAVE_REQUEST, MAX_HAVE_RESPONSE, MAX_META_REQUEST, MAX_META_RESPONSE,
    MetaRequest, MetaResponse, decode_body, encode_frame, frame_len,
};

/// Reads one frame of at most `limit` bytes and decodes it.
pub async fn read_frame<T, R>(io: &mut R, limit: usize) -> io::Result<T>
where
    T: serde::de::DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let len = frame_len(prefix, limit).map_err(invalid)?;
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    decode_body(&body, limit).map_err(invalid)
}

/// Writes one frame.
pub async fn write_frame<T: serde::Serialize, W: AsyncWrite + Unpin>(io: &mut W, msg: &T) -> io::Result<()> {
    io.write_all(&encode_frame(msg)).await?;
    io.flush().await
}

fn invalid(e: wire::WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A request/response codec of length-prefixed bincode frames, each direction with its limit.
#[derive(Debug)]
pub struct FrameCodec<Req, Resp> {
    request_limit: usize,
    response_limit: usize,
    _types: std::marker::PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            request_limit: self.request_limit,
            response_limit: self.response_limit,
            _types: std::marker::PhantomData,
        }
    }
}

impl<Req, Resp> FrameCodec<Req, Resp> {
    /// A codec refusing requests over `request_limit` and responses over `response_limit` bytes.
    pub fn new(request_limit: usize, response_limit: usize) -> Self {
        Self { request_limit, response_limit, _types: std::marker::PhantomData }
    }
}

/// `/swarm-dl/have/6`.
pub type HaveCodec = FrameCodec<HaveRequest, HaveResponse>;
/// `/swarm-dl/meta/1`.
pub type MetaCodec = FrameCodec<MetaRequest, MetaResponse>;

/// `/swarm-dl/report/1`.
pub type ReportCodec = FrameCodec<wire::ChunkRequest, wire::ReportAck>;

/// `/swarm-dl/preheat/1`.
pub type PreheatCodec = FrameCodec<wire::PreheatRequest, wire::PreheatReply>;

/// The preheat codec with its limits.
pub fn preheat_codec() -> PreheatCodec {
    FrameCodec::new(wire::MAX_PREHEAT_FRAME, wire::MAX_PREHEAT_REPLY)
}

/// The report codec with its limits.
pub fn report_codec() -> ReportCodec {
    FrameCodec::new(wire::MAX_CHUNK_FRAME, wire::MAX_CHUNK_FRAME)
}

/// The have codec with its limits.
pub fn have_codec() -> HaveCodec {
    FrameCodec::new(MAX_HAVE_REQUEST, MAX_HAVE_RESPONSE)
}

/// The meta codec with its limits.
pub fn meta_codec() -> MetaCodec {
    FrameCodec::new(MAX_META_REQUEST, MAX_META_RESPONSE)
}

impl<Req, Resp> libp2p::request_response::Codec for FrameCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req> {
        read_frame(io, self.request_limit).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp> {
        read_frame(io, self.response_limit).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        write_frame(io, &req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()> {
        write_frame(io, &res).await
    }
}
