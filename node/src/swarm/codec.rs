//! The `/swarm-dl/have/1` request/response codec: length-prefixed bincode frames with the hard
//! limits of [`swarm_protocol::wire`], read without trusting the length prefix.

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use std::io;
use swarm_protocol::wire::{
    self, HaveRequest, HaveResponse, MAX_HAVE_REQUEST, MAX_HAVE_RESPONSE, decode_body, encode_frame, frame_len,
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

/// The codec.
#[derive(Debug, Clone, Default)]
pub struct HaveCodec;

impl libp2p::request_response::Codec for HaveCodec {
    type Protocol = StreamProtocol;
    type Request = HaveRequest;
    type Response = HaveResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<HaveRequest> {
        read_frame(io, MAX_HAVE_REQUEST).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<HaveResponse> {
        read_frame(io, MAX_HAVE_RESPONSE).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: HaveRequest,
    ) -> io::Result<()> {
        write_frame(io, &req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: HaveResponse,
    ) -> io::Result<()> {
        write_frame(io, &res).await
    }
}
