//! A hop request encoded once per transaction, not once per hop.
//!
//! The gateway sends every transaction to three services. Each request is the same
//! transaction with its own trace context (the hop's span) and its own envelope
//! (correlation id, deadline, send time). [`Body`] encodes the transaction's fields, all but
//! the trace context, a single time into shared [`Bytes`]. Each hop's [`Encoded`] request
//! then adds only its trace-context entries and its envelope, and [`HopCodec`] writes the
//! hop's message around the shared body.
//!
//! What goes on the wire is a valid `mesh.v1` message that any protobuf decoder reads as the
//! generated request type. The trace-context entries (field 6, a map, so repeated entries)
//! come after the body's later fields, and protobuf allows fields in any order. The test
//! below decodes what the codec writes and compares it with the generated encoding.

use std::collections::HashMap;
use std::marker::PhantomData;

use prost::Message as _;
use prost::bytes::{BufMut, Bytes};
use prost::encoding::{self, WireType};
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

use crate::hop::HopRequest;
use crate::pb::Transaction;

/// Field numbers shared by every hop request (`RiskRequest`, `NotifyRequest`,
/// `AppendRequest`).
const CORRELATION_ID: u32 = 1;
const TRANSACTION: u32 = 2;
const DEADLINE_UNIX_MS: u32 = 3;
const SENT_UNIX_MICROS: u32 = 4;
/// `AppendRequest` only: the gateway's clock for the transaction (never set on other hops).
const HLC: u32 = 5;

/// A transaction encoded once, without its trace context: shared by its hops.
#[derive(Clone, Debug)]
pub struct Body(Bytes);

impl Body {
    /// Encodes `txn`, all but its trace context (which is left as it was).
    pub fn new(txn: &mut Transaction) -> Self {
        let context = std::mem::take(&mut txn.trace_context);
        let body = txn.encode_to_vec();
        txn.trace_context = context;
        Self(Bytes::from(body))
    }
}

/// One hop's request for a transaction: the shared [`Body`], this hop's trace context
/// (encoded), and its envelope.
pub struct Encoded<R> {
    body: Bytes,
    context: Bytes,
    correlation_id: u64,
    deadline_unix_ms: i64,
    sent_unix_micros: i64,
    hlc: u64,
    request: PhantomData<fn() -> R>,
}

impl<R> Clone for Encoded<R> {
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
            context: self.context.clone(),
            correlation_id: self.correlation_id,
            deadline_unix_ms: self.deadline_unix_ms,
            sent_unix_micros: self.sent_unix_micros,
            hlc: self.hlc,
            request: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for Encoded<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("body_len", &self.body.len())
            .field("context_len", &self.context.len())
            .field("correlation_id", &self.correlation_id)
            .field("deadline_unix_ms", &self.deadline_unix_ms)
            .finish()
    }
}

impl<R: HopRequest> Encoded<R> {
    /// A request for the transaction `body` with trace context `context`, due by
    /// `deadline_unix_ms` (Unix ms; 0 = none).
    pub fn new(body: &Body, context: &HashMap<String, String>, deadline_unix_ms: i64) -> Self {
        let mut buf = Vec::new();
        if !context.is_empty() {
            encoding::hash_map::encode(
                encoding::string::encode,
                encoding::string::encoded_len,
                encoding::string::encode,
                encoding::string::encoded_len,
                6,
                context,
                &mut buf,
            );
        }
        Self {
            body: body.0.clone(),
            context: Bytes::from(buf),
            correlation_id: 0,
            deadline_unix_ms,
            sent_unix_micros: 0,
            hlc: 0,
            request: PhantomData,
        }
    }

    /// A request for `txn` (encoded here, trace context included).
    pub fn of(mut txn: Transaction, deadline_unix_ms: i64) -> Self {
        let body = Body::new(&mut txn);
        Self::new(&body, &txn.trace_context, deadline_unix_ms)
    }

    pub fn correlation_id(&self) -> u64 {
        self.correlation_id
    }

    pub fn set_correlation_id(&mut self, id: u64) {
        self.correlation_id = id;
    }

    pub fn set_sent_unix_micros(&mut self, micros: i64) {
        self.sent_unix_micros = micros;
    }

    /// The gateway's clock for the transaction (field 5 of `AppendRequest`; 0: not sent).
    pub fn set_hlc(&mut self, hlc: u64) {
        self.hlc = hlc;
    }

    /// The generated message this encodes (for tests and diagnostics; the data path never
    /// decodes).
    pub fn decode(&self) -> Result<R, prost::DecodeError> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        R::decode(buf.as_slice())
    }

    fn transaction_len(&self) -> usize {
        self.body.len() + self.context.len()
    }

    fn encoded_len(&self) -> usize {
        let mut len = encoding::key_len(TRANSACTION)
            + encoding::encoded_len_varint(self.transaction_len() as u64)
            + self.transaction_len();
        if self.correlation_id != 0 {
            len += encoding::uint64::encoded_len(CORRELATION_ID, &self.correlation_id);
        }
        if self.deadline_unix_ms != 0 {
            len += encoding::int64::encoded_len(DEADLINE_UNIX_MS, &self.deadline_unix_ms);
        }
        if self.sent_unix_micros != 0 {
            len += encoding::int64::encoded_len(SENT_UNIX_MICROS, &self.sent_unix_micros);
        }
        if self.hlc != 0 {
            len += encoding::uint64::encoded_len(HLC, &self.hlc);
        }
        len
    }

    /// Writes the message, fields in number order, as the generated code would.
    fn encode(&self, buf: &mut impl BufMut) {
        if self.correlation_id != 0 {
            encoding::uint64::encode(CORRELATION_ID, &self.correlation_id, buf);
        }
        encoding::encode_key(TRANSACTION, WireType::LengthDelimited, buf);
        encoding::encode_varint(self.transaction_len() as u64, buf);
        buf.put_slice(&self.body);
        buf.put_slice(&self.context);
        if self.deadline_unix_ms != 0 {
            encoding::int64::encode(DEADLINE_UNIX_MS, &self.deadline_unix_ms, buf);
        }
        if self.sent_unix_micros != 0 {
            encoding::int64::encode(SENT_UNIX_MICROS, &self.sent_unix_micros, buf);
        }
        if self.hlc != 0 {
            encoding::uint64::encode(HLC, &self.hlc, buf);
        }
    }
}

/// The codec of a hop's stream: requests as [`Encoded`], replies decoded by prost.
pub struct HopCodec<R>(PhantomData<fn() -> R>);

impl<R> Default for HopCodec<R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// Writes an [`Encoded`] request.
pub struct HopEncoder<R>(PhantomData<fn() -> R>);

impl<R: HopRequest> Encoder for HopEncoder<R> {
    type Item = Encoded<R>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Encoded<R>, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        buf.reserve(item.encoded_len());
        item.encode(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl<R: HopRequest> Codec for HopCodec<R> {
    type Encode = Encoded<R>;
    type Decode = R::Reply;
    type Encoder = HopEncoder<R>;
    type Decoder = ProstDecoder<R::Reply>;

    fn encoder(&mut self) -> Self::Encoder {
        HopEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{AppendRequest, NotifyRequest, RiskRequest};

    fn txn(context: &[(&str, &str)]) -> Transaction {
        Transaction {
            id: "tx-1".into(),
            account: "acct-9".into(),
            amount_minor: 12_345,
            currency: "EUR".into(),
            merchant: "shop".into(),
            trace_context: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            priority: 2,
            after_hlc: 0,
        }
    }

    fn same_as_generated<R: HopRequest + PartialEq + std::fmt::Debug>(t: Transaction) {
        let mut encoded = Encoded::<R>::of(t.clone(), -5);
        encoded.set_correlation_id(42);
        encoded.set_sent_unix_micros(1_700_000_000_000_000);
        let mut generated = R::new(t, -5);
        generated.set_correlation_id(42);
        generated.set_sent_unix_micros(1_700_000_000_000_000);
        assert_eq!(encoded.decode().expect("decodes"), generated);
        assert_eq!(encoded.encoded_len(), generated.encoded_len());
    }

    #[test]
    fn every_hop_decodes_as_its_generated_request() {
        let context = [
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("b3", "x"),
        ];
        same_as_generated::<RiskRequest>(txn(&context));
        same_as_generated::<NotifyRequest>(txn(&context));
        same_as_generated::<AppendRequest>(txn(&context));
        same_as_generated::<AppendRequest>(txn(&[]));
        same_as_generated::<RiskRequest>(Transaction::default());
    }

    #[test]
    fn the_append_hop_carries_the_clock_as_its_generated_request() {
        let mut t = txn(&[]);
        t.after_hlc = 7;
        let mut encoded = Encoded::<AppendRequest>::of(t.clone(), 0);
        encoded.set_hlc(1_700_000_000_000 << 16 | 3);
        let mut generated = AppendRequest::new(t, 0);
        generated.hlc = 1_700_000_000_000 << 16 | 3;
        assert_eq!(encoded.decode().expect("decodes"), generated);
        assert_eq!(encoded.encoded_len(), generated.encoded_len());
    }

    #[test]
    fn hops_share_one_body_and_differ_in_context() {
        let mut t = txn(&[("traceparent", "a")]);
        let body = Body::new(&mut t);
        assert_eq!(
            t.trace_context.len(),
            1,
            "the caller's context is left in place"
        );
        let risk = Encoded::<RiskRequest>::new(
            &body,
            &HashMap::from([("traceparent".to_string(), "r".to_string())]),
            0,
        );
        let audit = Encoded::<AppendRequest>::new(
            &body,
            &HashMap::from([("traceparent".to_string(), "l".to_string())]),
            0,
        );
        assert_eq!(
            risk.body.as_ptr(),
            audit.body.as_ptr(),
            "one encoding, shared"
        );
        let risk = risk.decode().unwrap().transaction.unwrap();
        let audit = audit.decode().unwrap().transaction.unwrap();
        assert_eq!(risk.trace_context["traceparent"], "r");
        assert_eq!(audit.trace_context["traceparent"], "l");
        assert_eq!((risk.id.as_str(), audit.amount_minor), ("tx-1", 12_345));
    }
}
