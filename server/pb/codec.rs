//! The protobuf codec of the server's services: prost's, with smaller
//! starting buffers, and malformed requests refused as `INVALID_ARGUMENT`.
//!
//! tonic-prost's decoder answers any decode error `INTERNAL`, as if the
//! server were at fault; garbage bytes, a string that is not UTF-8 or a
//! message nested past prost's recursion limit are the caller's.
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
use tonic::codec::{
    BufferSettings, Codec as TonicCodec, DecodeBuf, Decoder as TonicDecoder, EncodeBuf,
    Encoder as TonicEncoder,
};

use crate::error::Error;

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
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(PhantomData)
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

/// prost's decoder, refusing malformed messages as the caller's error.
#[derive(Debug, Clone, Copy)]
pub struct Decoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> TonicDecoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| malformed(&e).into())
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// `INVALID_ARGUMENT` naming the field where decoding failed.
///
/// prost keeps the failing (message, field) pairs, innermost first, but shows
/// them only in its `Display`: "failed to decode Protobuf message:
/// Manifest.name: CreateManifestRequest.manifest: invalid string value: ...".
/// Without any (garbage from the first byte), the field is `request`.
fn malformed(e: &prost::DecodeError) -> Error {
    let text = e.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut fields = Vec::new();
    let mut rest = text;
    while let Some((location, tail)) = rest.split_once(": ") {
        let Some((message, field)) = location.split_once('.') else {
            break;
        };
        let ident =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !(ident(message) && ident(field)) {
            break;
        }
        fields.push(field);
        rest = tail;
    }
    fields.reverse();
    let field = if fields.is_empty() {
        "request".to_owned()
    } else {
        fields.join(".")
    };
    Error::invalid(field, format!("malformed request: {rest}"))
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::pb;

    fn decode<M: prost::Message + Default + std::fmt::Debug>(bytes: &[u8]) -> Error {
        malformed(&M::decode(bytes).expect_err("malformed"))
    }

    #[test]
    fn decode_errors_name_the_field() {
        let mut bytes = pb::CreateManifestRequest {
            manifest: Some(pb::Manifest {
                name: "ab".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        let at = bytes.iter().rposition(|b| *b == b'a').expect("name");
        bytes[at] = 0xff;
        let err = decode::<pb::CreateManifestRequest>(&bytes);
        assert!(
            matches!(&err, Error::InvalidArgument { field, reason }
                if field == "manifest.name" && reason.starts_with("malformed request: ")),
            "{err:?}"
        );
        let err = decode::<pb::CreateManifestRequest>(&[0xff; 8]);
        assert!(
            matches!(&err, Error::InvalidArgument { field, .. } if field == "request"),
            "{err:?}"
        );
    }
}
