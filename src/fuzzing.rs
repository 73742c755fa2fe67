//! Entry points for the fuzz targets in `fuzz/` (run by `scripts/fuzz.sh`), each a property
//! over arbitrary bytes that panics when violated. Not a stable API.
//!
//! They live in the library so that every input a fuzzer finds becomes a regression test in
//! the normal suite by calling the same function (the tests below).

use std::io::{self, Read};

use crate::aggregate::{self, Source, Spec};
use crate::storage::azure::shared_key;
use crate::worker::envelope::Envelope;
use crate::worker::job::{Job, JobRules, MessageEncoding};

/// The reducer on arbitrary bytes: it never panics, and its result does not depend on how
/// the input is split into reads, nor on streaming versus holding mode, nor on the fast lane
/// (holding mode over the whole input in one read, with and without the lane, gives the same
/// output or the same error). The first byte picks the two read patterns and the bad-row
/// allowance; the rest is the CSV.
pub fn reducer(data: &[u8]) {
    let Some((&seed, csv)) = data.split_first() else {
        return;
    };
    // Limits small enough that a fuzzer cannot make one run allocate or print for long.
    let spec = Spec {
        max_bad_rows: u64::from(seed % 3),
        max_buckets: 5_000,
        max_line_bytes: 4096,
        ..Spec::default()
    };
    // Re-openable: streams, and restarts in holding mode on an out-of-order row.
    let streamed = run(&spec, &mut Chunked::new(csv, seed, true));
    // Read once: holding mode from the start, with another split.
    let held = run(
        &spec,
        &mut Chunked::new(csv, seed.rotate_left(3) ^ 0x5a, false),
    );
    match (&streamed, &held) {
        (Ok(a), Ok(b)) => assert!(a == b, "streaming and holding outputs differ"),
        (Err(_), Err(_)) => {}
        _ => panic!("one mode failed, the other did not: {streamed:?} vs {held:?}"),
    }
    // Reads of 1 to 64 bytes rarely leave the lane the 64 bytes ahead it needs, so the lane
    // is compared where it runs most: the whole input in one read.
    let mut whole = Chunked::new(csv, seed, false);
    whole.whole = true;
    let lane = run(&spec, &mut whole);
    let plain = aggregate::without_fast_lane(|| run(&spec, &mut whole));
    assert!(
        lane == plain,
        "the fast lane changed the result: {lane:?} vs {plain:?}"
    );
    if let (Ok(a), Ok(b)) = (&lane, &held) {
        assert!(a == b, "one read and many reads give different outputs");
    }
}

fn run(spec: &Spec, source: &mut Chunked<'_>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    aggregate::run(spec, source, &mut out)
        .map(|_| out)
        .map_err(|e| e.to_string())
}

/// An in-memory input handed out in reads of varying sizes (1 to 64 bytes, from `seed`), or
/// as much as each read asks for (`whole`).
struct Chunked<'a> {
    data: &'a [u8],
    seed: u8,
    reopen: bool,
    whole: bool,
}

impl<'a> Chunked<'a> {
    fn new(data: &'a [u8], seed: u8, reopen: bool) -> Self {
        Chunked {
            data,
            seed,
            reopen,
            whole: false,
        }
    }
}

impl Source for Chunked<'_> {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(ChunkReader {
            rest: self.data,
            state: u32::from(self.seed) | 1,
            whole: self.whole,
        }))
    }
    fn can_reopen(&self) -> bool {
        self.reopen
    }
}

struct ChunkReader<'a> {
    rest: &'a [u8],
    state: u32,
    whole: bool,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // xorshift: a deterministic sequence of read sizes.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let want = if self.whole {
            buf.len()
        } else {
            1 + (self.state % 64) as usize
        };
        let n = want.min(buf.len()).min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// The message decoder on arbitrary text, in every encoding: never panics; the bookkeeping
/// envelope (releases, deferrals, poison copies) always gives back the producer's text
/// unchanged, and its claimed counts, once clamped to a delivery count, never exceed the
/// deliveries before this one. The first two bytes pick the delivery count.
pub fn message(data: &[u8]) {
    let dequeue_count = data
        .get(..2)
        .map_or(1, |b| u64::from(u16::from_le_bytes([b[0], b[1]])))
        .max(1);
    let text = String::from_utf8_lossy(data);
    let mut envelope = Envelope::open(&text);
    for encoding in [
        MessageEncoding::Auto,
        MessageEncoding::Plain,
        MessageEncoding::Base64,
    ] {
        let rules = JobRules {
            account: "devstoreaccount1".into(),
            container: "in".into(),
            allowed_containers: vec!["other".into()],
            encoding,
        };
        let _ = Job::parse(&envelope.original, &rules);
    }
    envelope.clamp(dequeue_count);
    assert!(envelope.released + envelope.deferred < dequeue_count);
    assert!(envelope.attempts(dequeue_count) >= 1);
    let rewrites = [
        envelope.released_once_more(),
        envelope.deferred_once_more(),
        envelope.rewritten(),
    ];
    for wrapped in rewrites.into_iter().flatten() {
        assert_eq!(Envelope::open(&wrapped).original, envelope.original);
    }
    if let Some(wrapped) = envelope.released_once_more() {
        assert_eq!(Envelope::open(&wrapped).released, envelope.released + 1);
    }
}

/// The connection-string parser on arbitrary text: never panics.
pub fn connection_string(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::storage::connection::parse_connection_string(&text);
}

/// Shared Key canonicalisation on arbitrary headers and URLs: never panics. Lines are the
/// verb, the URL, then `name:value` headers.
pub fn shared_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let verb = lines.next().unwrap_or_default();
    let Some(Ok(url)) = lines.next().map(url::Url::parse) else {
        return;
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let ms: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-ms-"))
        .cloned()
        .collect();
    let _ = shared_key::string_to_sign(verb, lookup, "", &ms, "acct", &url);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Seeds: representative inputs for each target (and, as they turn up, what a fuzzer found).
    #[test]
    fn reducer_seeds() {
        for input in [
            &b""[..],
            b"\x07Datetime,T\n2024-01-01 00:00:00,1.5\n2024-01-01 00:30:00,2\n",
            b"\x01t,v\n2024-01-01 02:00:00,1\n2024-01-01 00:00:00,2\n2024-01-01 01:00:00,x\n",
            b"\x02\xef\xbb\xbft,v,w\r\n2024-01-01T00:00:00Z,1e400,\"3\"\r\n",
            b"\x00t,v\n1999-12-31 23:59:59,1\n2100-01-01 00:00:00,2\n",
            // Found by the fuzzer: a refill after the quote cache was reset underflowed it
            // (`attempt to subtract with overflow` in `Records::fill`; in a release build the
            // wrapped cache could report a quoted line as quote-free).
            b"(\x08,\n\xab\xd7\xab\xab\xab\xd7\xab\xab\n\n",
        ] {
            reducer(input);
        }
    }

    #[test]
    fn message_seeds() {
        for input in [
            "t.csv",
            "{\"$rollq\":{\"released\":1},\"body\":\"t.csv\"}",
            "eyJibG9iIjoidC5jc3YifQ==",
            "[{\"eventType\":\"Microsoft.Storage.BlobCreated\",\"data\":{}}]",
            "{\"specversion\":\"1.0\",\"type\":\"x\"}",
            "http://127.0.0.1:10000/devstoreaccount1/in/%ZZ",
        ] {
            message(input.as_bytes());
        }
    }

    #[test]
    fn connection_string_seeds() {
        for input in [
            "UseDevelopmentStorage=true",
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5;EndpointSuffix=core.windows.net",
            "BlobEndpoint=http://x;SharedAccessSignature=sv=1&sig=abc",
            ";;=;==;AccountName",
        ] {
            connection_string(input.as_bytes());
        }
    }

    #[test]
    fn shared_key_seeds() {
        for input in [
            "GET\nhttp://127.0.0.1:10000/devstoreaccount1/c/b?comp=list&COMP=x\nx-ms-date:now\nRange:bytes=0-1",
            "put\nhttps://a.blob.core.windows.net/%2F%2e%2e?\ncontent-type:",
        ] {
            shared_key(input.as_bytes());
        }
    }
}
