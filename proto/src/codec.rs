//! The codec of the `chat.v1.Chat` gRPC service: tonic-prost's
//! `ProstCodec`, except for what a body that is not valid protobuf becomes.
//!
//! tonic decodes a request before the service sees it, and `ProstCodec`
//! turns every decode error into `INTERNAL`, which says "the server is
//! broken" when it is the caller's message that is (bad wire type, a
//! truncated field, a string that is not UTF-8). Here it is
//! `INVALID_ARGUMENT`, as the chat answers every other bad input. The same
//! codec decodes replies on the client side (tonic-prost-build sets one
//! codec per service), where a broken reply from a server would then also
//! read `INVALID_ARGUMENT`; the message says it was a malformed message.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// `ProstCodec` with decode errors as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ChatCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ChatCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ChatCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ChatDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ChatDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// `ProstDecoder` whose decode errors are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ChatDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ChatDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // ProstDecoder's only error is the protobuf decode error.
        self.0.decode(buf).map_err(|s| match s.code() {
            Code::Internal => {
                Status::invalid_argument(format!("malformed protobuf message: {}", s.message()))
            }
            _ => s,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
