//! Typed, length-prefixed messages over a byte stream.
//!
//! Every algorithm of this crate that talks over TCP speaks in frames: a 4-byte big-endian
//! length, then that many bytes of JSON holding one typed message. A stream delivers bytes,
//! not messages: one read may hold several frames, or a part of one. [`Decoder`] buffers
//! bytes and yields whole messages whatever the cuts; [`FrameReader`] does the same over an
//! async reader; [`write_frame`] sends one message.
//!
//! Bounds: a frame body is at most [`MAX_FRAME`] bytes; a longer announced length is an
//! error that ends the session (it cannot be resynchronised), never the process.

use std::marker::PhantomData;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame body accepted or sent, in bytes (64 KiB).
pub const MAX_FRAME: usize = 64 * 1024;
/// Bytes of the length prefix.
pub const HEADER: usize = 4;
/// How many bytes a [`FrameReader`] asks the socket for at once.
const READ_CHUNK: usize = 8 * 1024;

/// The bytes of one frame holding `msg`.
pub fn encode<T: Serialize>(msg: &T) -> anyhow::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).context("cannot encode a message")?;
    if body.len() > MAX_FRAME {
        bail!(
            "message of {} bytes is over the {MAX_FRAME}-byte frame limit",
            body.len()
        );
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Collects bytes as they arrive and cuts them into messages of type `T`.
#[derive(Debug)]
pub struct Decoder<T> {
    buf: Vec<u8>,
    _msg: PhantomData<fn() -> T>,
}

impl<T> Default for Decoder<T> {
    fn default() -> Self {
        Decoder {
            buf: Vec::new(),
            _msg: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Decoder<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `None` if more bytes are needed. An error (frame too long,
    /// a body that is not a message of type `T`) means the stream is unusable.
    pub fn next_message(&mut self) -> anyhow::Result<Option<T>> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..HEADER].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            bail!("peer announced a frame of {len} bytes, over the {MAX_FRAME}-byte limit");
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&self.buf[HEADER..HEADER + len])
            .context("peer sent a malformed message");
        self.buf.drain(..HEADER + len);
        msg.map(Some)
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Reads typed messages from an async byte stream.
#[derive(Debug)]
pub struct FrameReader<R, T> {
    inner: R,
    decoder: Decoder<T>,
}

impl<R: AsyncRead + Unpin, T: DeserializeOwned> FrameReader<R, T> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            decoder: Decoder::new(),
        }
    }

    /// The next message; `None` when the peer closed cleanly between frames. A close in
    /// the middle of a frame is an error.
    pub async fn read(&mut self) -> anyhow::Result<Option<T>> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                return Ok(Some(msg));
            }
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                if self.decoder.pending() == 0 {
                    return Ok(None);
                }
                bail!(
                    "peer closed the connection in the middle of a message ({} bytes pending)",
                    self.decoder.pending()
                );
            }
            self.decoder.push(&chunk[..n]);
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Sends one message as one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> anyhow::Result<()> {
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests;
