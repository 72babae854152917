//! One entry point per parser that reads what others wrote, for the fuzz targets (`fuzz/`) and the
//! corpus replay test (`tests/node_tests/fuzz_corpus.rs`), so both drive the daemon's own parsers with the
//! same checks.
//!
//! Each function takes raw bytes, runs the parser the daemon runs on them and, when the input is
//! accepted, checks what must hold of the answer: that writing it back and reading it again gives
//! the same thing, that an edit lands where it should. Refusing an input is fine; a panic (a
//! crash in a parser, or a broken round trip) is a finding.
//!
//! Each returns whether the parser accepted the input (so the replay test can tell that a
//! corpus reaches the checks), and panics on purpose on a failed check: that is how a fuzzer
//! learns of it.

use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;

/// An entry point: runs the parser on the input and checks its answer; true if it accepted it.
pub type Entry = fn(&[u8]) -> bool;

/// Every target: the name of its `fuzz/fuzz_targets/<name>.rs` and corpus `fuzz/corpus/<name>/`,
/// and its entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("pem", pem),
    ("x509", x509),
    ("private_key", private_key),
    ("kubeconfig", kubeconfig),
    ("manifest", manifest),
    ("control", control),
    ("cfssl_answer", cfssl_answer),
    ("lease_record", lease_record),
    ("journal", journal),
    ("duration", duration),
    ("window", window),
    ("config", config),
];

/// A fixed "now" for parsers that take one, so that a corpus file replays the same way any day.
const NOW: OffsetDateTime = time::macros::datetime!(2026-03-29 00:10 UTC);

/// PEM blocks ([`crate::pki::pem::blocks`]); a block with a plain label must survive
/// [`crate::pki::pem::encode`] and a second read unchanged.
pub fn pem(data: &[u8]) -> bool {
    use crate::pki::pem;
    let Ok(blocks) = pem::blocks(Path::new("fuzz.pem"), data) else {
        return false;
    };
    assert!(!blocks.is_empty(), "Ok with no block");
    for b in &blocks {
        let plain = !b.label.is_empty()
            && b.label
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' ');
        if !plain {
            continue;
        }
        let again = pem::blocks(
            Path::new("fuzz.pem"),
            pem::encode(&b.label, &b.der).as_bytes(),
        )
        .expect("an encoded block reads back");
        assert_eq!(again.as_slice(), std::slice::from_ref(b));
    }
    true
}

/// One DER certificate ([`crate::pki::cert::Cert::from_der`]), then everything the inventory
/// asks of it, and the PEM the daemon would write of it read back to the same certificate.
pub fn x509(data: &[u8]) -> bool {
    use crate::pki::{cert, encode, pem};
    let Ok(c) = cert::Cert::from_der(data) else {
        return false;
    };
    assert!(!c.tbs().is_empty());
    let _ = c.is_self_signed();
    let _ = c.residual_seconds(NOW);
    let _ = c.sans.iter().map(ToString::to_string).count();
    let _ = (c.key_algorithm.to_string(), format!("{c:?}"));
    let _ = cert::spki_algorithm(&c.spki_der);
    let _ = cert::spki_public_bits(&c.spki_der);
    let blocks = pem::blocks(Path::new("fuzz.crt"), encode::cert_pem(&c.der).as_bytes())
        .expect("the PEM of a certificate reads back");
    let again = cert::Cert::from_der(&blocks[0].der).expect("a certificate reads back");
    assert_eq!(again.der, c.der);
    assert_eq!(
        (&again.subject, &again.serial, again.not_after),
        (&c.subject, &c.serial, c.not_after)
    );
    true
}

/// A private key file: its PEM blocks, the key loaded for signing
/// ([`crate::pki::key::PrivateKey::from_blocks`]) and its public half read from the structure
/// alone ([`crate::pki::key::public_half`], what the inventory matches certificates with), which
/// must agree; the key written back in its format must load to the same key.
pub fn private_key(data: &[u8]) -> bool {
    use crate::pki::{encode, key, pem};
    let Ok(blocks) = pem::blocks(Path::new("fuzz.key"), data) else {
        return false;
    };
    let half = key::public_half(&blocks);
    let Ok(k) = key::PrivateKey::from_blocks(&blocks) else {
        return false;
    };
    let raw = k.pair.public_key_raw().to_vec();
    if let Ok(half) = half {
        assert_eq!(half, raw, "the structure's public half is not the key's");
    }
    let _ = format!("{k:?}");
    let der = encode::private_key_der(&k.pair, k.format).expect("a key encodes in its format");
    let block = pem::Block {
        label: k.format.pem_label().to_owned(),
        // The block wipes its copy when dropped, as the secret does its own.
        der: der.to_vec(),
    };
    let again = key::PrivateKey::from_block(&block).expect("a written key reads back");
    assert_eq!(again.pair.public_key_raw(), raw.as_slice());
    assert_eq!(again.format, k.format);
    true
}

/// A kubeconfig ([`crate::pki::kubeconfig::parse`]); for the first named user that embeds a
/// client certificate, the renewal's edit ([`crate::pki::kubeconfig::replace_embedded_client`])
/// must give a kubeconfig that reads back with the new credentials.
pub fn kubeconfig(data: &[u8]) -> bool {
    use crate::pki::kubeconfig::{self, Source};
    let _ = kubeconfig::looks_like_kubeconfig(data);
    let path = Path::new("/etc/kubernetes/admin.conf");
    let Ok(kc) = kubeconfig::parse(path, data) else {
        return false;
    };
    let Some(user) = kc
        .users
        .iter()
        .find(|u| !u.name.is_empty() && matches!(u.cert, Source::Embedded(_)))
    else {
        return true;
    };
    let key = user
        .key
        .as_ref()
        .filter(|k| matches!(k, Source::Embedded(_)))
        .map(|_| "NEW KEY");
    let Ok(out) = kubeconfig::replace_embedded_client(data, &user.name, "NEW CERT", key) else {
        return true;
    };
    let again = kubeconfig::parse(path, out.as_bytes()).expect("an edited kubeconfig reads back");
    let edited = again
        .users
        .iter()
        .find(|u| u.name == user.name)
        .expect("the edited user is still there");
    assert_eq!(edited.cert, Source::Embedded(b"NEW CERT".to_vec().into()));
    if key.is_some() {
        assert_eq!(
            edited.key,
            Some(Source::Embedded(b"NEW KEY".to_vec().into()))
        );
    }
    assert_eq!(again.clusters.len(), kc.clusters.len());
    true
}

/// A static pod manifest annotated for a restart ([`crate::restart::manifest::with_annotation`]):
/// the result must parse, carry the annotation, and keep the pod's spec.
pub fn manifest(data: &[u8]) -> bool {
    use crate::restart::manifest::{RESTARTED_AT, with_annotation};
    use serde_yaml_ng::Value;
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let stamp = "2026-03-29T00:10:00Z";
    let Ok(out) = with_annotation(Path::new("fuzz.yaml"), text, RESTARTED_AT, stamp) else {
        return false;
    };
    let before: Value = serde_yaml_ng::from_str(text).expect("accepted text parses");
    let after: Value = serde_yaml_ng::from_str(&out).expect("the annotated manifest parses");
    let annotation = after
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(RESTARTED_AT));
    assert_eq!(annotation, Some(&Value::from(stamp)), "{out}");
    assert_eq!(before.get("spec"), after.get("spec"));
    assert_eq!(before.get("kind"), after.get("kind"));
    true
}

/// Control protocol frames: the bytes as a stream of request frames and of response frames
/// ([`crate::control::frame::read_request`], [`crate::control::frame::read_response`]), and as
/// the body of one well-framed request. What is read must encode and read back the same.
pub fn control(data: &[u8]) -> bool {
    use crate::control::frame::{self, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
    use crate::control::proto::{Request, Response};
    const T: Duration = Duration::from_secs(5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let mut accepted = false;
        let mut framed = Vec::with_capacity(data.len() + 4);
        framed.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(data);
        for stream in [data, framed.as_slice()] {
            let mut reader = stream;
            while let Ok(request) = frame::read_request(&mut reader, T).await {
                let _ = (request.changes_state(), request.name());
                let frame = frame::encode(&request, MAX_REQUEST_BYTES)
                    .expect("a request read encodes within the cap");
                let again: Request = frame::read_request(&mut frame.as_slice(), T)
                    .await
                    .expect("an encoded request reads back");
                assert_eq!(again, request);
                accepted = true;
            }
            let mut reader = stream;
            while let Ok(response) = frame::read_response(&mut reader, T).await {
                let frame =
                    frame::encode(&response, MAX_RESPONSE_BYTES).expect("a response read encodes");
                let again: Response = frame::read_response(&mut frame.as_slice(), T)
                    .await
                    .expect("an encoded response reads back");
                let twice = frame::encode(&again, MAX_RESPONSE_BYTES).expect("encodes again");
                assert_eq!(twice, frame);
                accepted = true;
            }
        }
        accepted
    })
}

/// cfssl's answer to a signing request ([`crate::issuer::cfssl::parse_answer`]); an answer that
/// did not come with HTTP 200 is never a certificate.
pub fn cfssl_answer(data: &[u8]) -> bool {
    use crate::issuer::cfssl::parse_answer;
    assert!(parse_answer(500, data).is_err());
    let Ok(der) = parse_answer(200, data) else {
        return false;
    };
    let _ = crate::pki::cert::Cert::from_der(&der);
    true
}

/// Lease records as peers write them into etcd, one JSON value a line
/// ([`crate::lease::record::Record::from_json`]): each must write back to the same record, and
/// the queue's order ([`crate::lease::queue::sort`]) must not depend on the order etcd listed
/// the entries in, since every node computes it on its own.
pub fn lease_record(data: &[u8]) -> bool {
    use crate::lease::queue;
    use crate::lease::record::{HolderRecord, NodeSummary, QueueEntry, Record};
    fn round_trip<T: Record + PartialEq + std::fmt::Debug>(value: &[u8]) -> Option<T> {
        let r = T::from_json(value).ok()?;
        let json = serde_json::to_vec(&r).expect("a record serialises");
        assert_eq!(T::from_json(&json).expect("a record reads back"), r);
        Some(r)
    }
    let mut entries: Vec<QueueEntry> = Vec::new();
    let mut accepted = false;
    for line in data.split(|b| *b == b'\n') {
        accepted |= round_trip::<HolderRecord>(line).is_some();
        if let Some(s) = round_trip::<NodeSummary>(line) {
            assert!(s.same_news(&s));
            accepted = true;
        }
        entries.extend(round_trip::<QueueEntry>(line));
    }
    accepted |= !entries.is_empty();
    let mut names: Vec<&str> = entries.iter().map(|e| e.node.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != entries.len() {
        return accepted;
    }
    let mut forward = entries.clone();
    let mut backward: Vec<QueueEntry> = entries.into_iter().rev().collect();
    queue::sort(&mut forward);
    queue::sort(&mut backward);
    assert_eq!(
        forward, backward,
        "the queue's order depends on the listing"
    );
    for (i, e) in forward.iter().enumerate() {
        assert_eq!(queue::may_take(&forward, &e.node, forward.len()), Some(i));
    }
    accepted
}

/// A rotation journal ([`crate::rotation::journal::Journal::parse`]); one that is accepted must
/// be written back ([`crate::rotation::journal::Journal::save`]'s form) and read to the same.
pub fn journal(data: &[u8]) -> bool {
    use crate::rotation::journal::Journal;
    let path = Path::new("/var/lib/certrotd/rotations/20260101T000000Z-abcdef/journal.json");
    let Ok(j) = Journal::parse(path, data) else {
        return false;
    };
    let json = serde_json::to_vec_pretty(&j).expect("a journal serialises");
    let again = Journal::parse(path, &json).expect("a written journal reads back");
    assert_eq!(again, j);
    let phase = serde_json::to_string(&j.phase).expect("a phase serialises");
    assert_eq!(phase, format!("\"{}\"", j.phase.as_str()));
    true
}

/// A duration as operators write it ([`crate::duration::parse`]): what is read must format
/// ([`crate::duration::format`]) to text that reads back exactly.
pub fn duration(data: &[u8]) -> bool {
    use crate::duration::{format, format_residual, parse};
    if let Some(bytes) = data.get(..8) {
        let seconds = i64::from_le_bytes(bytes.try_into().unwrap_or_default());
        assert!(!format_residual(seconds).is_empty());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(d) = parse(text) else {
        return false;
    };
    let written = format(d);
    assert_eq!(parse(&written), Ok(d), "{text:?} formatted as {written:?}");
    true
}

/// Maintenance windows ([`crate::window::Windows::parse`]): the first line is the time zone,
/// optionally followed by ` @<unix seconds>` for `now`, each further line a window. The next
/// opening ([`crate::window::Windows::next_open`]) must exist, not lie before `now`, be open,
/// and be the first open second (the one before it closed).
pub fn window(data: &[u8]) -> bool {
    use crate::window::Windows;
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let (tz, at) = match first.split_once(" @") {
        Some((tz, at)) => (tz, at.parse::<i64>().ok()),
        None => (first, None),
    };
    let specs: Vec<String> = lines.take(16).map(str::to_owned).collect();
    let Ok(w) = Windows::parse(&specs, tz) else {
        return false;
    };
    // Without `@`: an instant over eight years around NOW, chosen by the input (FNV-1a).
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let span = 8 * 366 * 86_400;
    let offset = i64::try_from(hash % span).unwrap_or(0) - i64::try_from(span / 2).unwrap_or(0);
    let now = at
        .filter(|s| (0..4_102_444_800).contains(s))
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(NOW + time::Duration::seconds(offset));
    let open = w.is_open(now);
    if w.is_always() {
        assert!(open);
    }
    let next = w.next_open(now).expect("a window opens within two weeks");
    assert!(next >= now, "next opening {next} before now {now}");
    assert!(
        w.is_open(next),
        "next opening {next} (from {now}) is not open"
    );
    assert_eq!(next == now, open);
    if next > now {
        let before = next - time::Duration::seconds(1);
        assert!(
            !w.is_open(before),
            "open at {before}, before next opening {next} (from {now})"
        );
    }
    true
}

/// The configuration loader ([`crate::config::from_bytes`]): settings it accepts must write as
/// TOML that loads back to the same settings.
pub fn config(data: &[u8]) -> bool {
    use crate::config::{LoadOptions, from_bytes};
    let path = Path::new("/nonexistent/certrotd-fuzz/certrotd.toml");
    let opts = LoadOptions::default();
    let Ok(settings) = from_bytes(path, data, &opts) else {
        return false;
    };
    let text = toml::to_string(&settings).expect("settings serialise as TOML");
    let again = from_bytes(path, text.as_bytes(), &opts)
        .unwrap_or_else(|e| panic!("settings written as\n{text}\ndo not load back: {e}"));
    assert_eq!(again, settings, "written as\n{text}");
    true
}
