//! The protobuf codec of the server's services: prost's, with smaller
//! starting buffers.
//!
//! tonic allocates the codec's buffer size up front for every call, once to
//! decode and once to encode, and keeps both for as long as a stream lives.
//! Its default of 8 KiB is two thirds of the memory budget of an idle health
//! stream, whose messages are tens of bytes. Buffers still grow, in steps of
//! this size, for the rare large message.
//!
//! The encoder reserves each message's encoded length before writing it:
//! growing a 1 KiB buffer in steps to fit a routing answer of several
//! kilobytes copied the answer three more times.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec as TonicCodec, EncodeBuf, Encoder as TonicEncoder};
use tonic_prost::ProstDecoder;

/// Starting size (and growth step) of each call's buffers.
const BUFFER_SIZE: usize = 1024;
/// Encoded bytes after which a streaming response yields to the runtime (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// What the generated services use in place of `tonic_prost::ProstCodec`.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Encoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

/// prost's encoder with one allocation per message.
#[derive(Debug, Clone, Copy)]
pub struct Encoder<T>(PhantomData<T>);

impl<T: prost::Message> TonicEncoder for Encoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // `encode` would compute the length again to check the room reserved above.
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
