//! Prediction ids: self-describing and signed.
//!
//! An id carries everything needed to score an outcome against it: the
//! model, version and arm that answered, when, and the prediction itself
//! (the probability of a binary kind, the class distribution of a
//! multiclass one). It is signed with HMAC-SHA256 under a key every replica
//! shares, so any replica can score an outcome for an id another replica
//! served, with no lookup and no central service, and a forged or garbled id
//! is recognised without touching any state.
//!
//! Layout before base64url (no padding), all integers little-endian:
//!
//! ```text
//! 0      format (1)
//! 1      arm (0 live, 1 canary, 2 shadow, 3 pinned)
//! 2      model name length n (1..=63), then n bytes of the name
//! +8     version (u64)
//! +8     served at (i64, milliseconds since the Unix epoch)
//! +8     nonce (u64, random per item)
//! +1     prediction tag: 0 binary, 1 classes
//!        binary: probability (f32)
//!        classes: count k (u8, 2..=32), then k probabilities as u16 (p × 65535)
//! +16    HMAC-SHA256 of everything before, truncated to 128 bits
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const FORMAT: u8 = 1;
const TAG_BYTES: usize = 16;
/// Longest model name an id carries (registry names are shorter).
pub const MAX_NAME_BYTES: usize = 63;
/// Most classes a multiclass prediction carries.
pub const MAX_CLASSES: usize = 32;
/// Longest id text accepted before decoding.
pub const MAX_ID_CHARS: usize = 256;

/// Which side of a deployment answered.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// The live version.
    Live,
    /// The canary.
    Canary,
    /// A shadow copy of the request (answer not returned).
    Shadow,
    /// A version the request pinned.
    Pinned,
}

impl Arm {
    /// Label for metrics and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Live => "live",
            Arm::Canary => "canary",
            Arm::Shadow => "shadow",
            Arm::Pinned => "pinned",
        }
    }

    fn code(self) -> u8 {
        match self {
            Arm::Live => 0,
            Arm::Canary => 1,
            Arm::Shadow => 2,
            Arm::Pinned => 3,
        }
    }

    fn from_code(code: u8) -> Option<Arm> {
        Some(match code {
            0 => Arm::Live,
            1 => Arm::Canary,
            2 => Arm::Shadow,
            3 => Arm::Pinned,
            _ => return None,
        })
    }

    /// Every arm, in display order.
    pub const ALL: [Arm; 4] = [Arm::Live, Arm::Canary, Arm::Shadow, Arm::Pinned];
}

impl std::str::FromStr for Arm {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        Arm::ALL
            .into_iter()
            .find(|arm| arm.as_str() == value)
            .ok_or_else(|| format!("unknown arm {value:?}"))
    }
}

/// What the model said, as the id carries it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// Probability of the positive class of a binary kind.
    Binary(f32),
    /// Probabilities of every class of a multiclass kind (quantized to
    /// 1/65535 in the id).
    Classes(Vec<f32>),
}

/// A decoded, verified prediction id.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionId {
    /// Model name.
    pub model: String,
    /// Version that answered.
    pub version: u64,
    /// Arm that answered.
    pub arm: Arm,
    /// When, in milliseconds since the Unix epoch.
    pub served_at_ms: i64,
    /// Random per item, so two answers never share an id.
    pub nonce: u64,
    /// The prediction.
    pub prediction: Prediction,
}

/// Why an id was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    /// Not an id at all: bad encoding, truncated, wrong format or fields.
    Garbled,
    /// Well formed, but its signature is not ours (forged or altered).
    Forged,
}

impl IdError {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            IdError::Garbled => "garbled_id",
            IdError::Forged => "forged_id",
        }
    }
}

/// The key that signs and checks prediction ids; every replica of a fleet
/// must hold the same one.
#[derive(Clone)]
pub struct IdKey {
    bytes: Vec<u8>,
    /// The HMAC keyed once: every id clones it rather than hash the key's
    /// two padded blocks again, which halves the SHA-256 work of an id.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(<redacted>)")
    }
}

impl IdKey {
    /// A key from raw bytes; at least 16 are required.
    pub fn new(bytes: Vec<u8>) -> Result<IdKey, String> {
        if bytes.len() < 16 {
            return Err(format!(
                "a prediction-id key needs at least 16 bytes, got {}",
                bytes.len()
            ));
        }
        let keyed =
            <Hmac<Sha256> as Mac>::new_from_slice(&bytes).expect("HMAC takes keys of any length");
        Ok(IdKey { bytes, keyed })
    }

    /// A key from hex text (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<IdKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|_| "the key is not hex".to_owned())?;
        IdKey::new(bytes)
    }

    /// The key as hex, to keep it in a cache or a secret.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.keyed.clone()
    }

    /// Encodes and signs `id`. Names longer than [`MAX_NAME_BYTES`] and
    /// more than [`MAX_CLASSES`] classes are a caller bug and are cut.
    pub fn sign(&self, id: &PredictionId) -> String {
        let name = &id.model.as_bytes()[..id.model.len().min(MAX_NAME_BYTES)];
        let mut bytes = Vec::with_capacity(64 + name.len());
        bytes.push(FORMAT);
        bytes.push(id.arm.code());
        bytes.push(name.len() as u8);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&id.version.to_le_bytes());
        bytes.extend_from_slice(&id.served_at_ms.to_le_bytes());
        bytes.extend_from_slice(&id.nonce.to_le_bytes());
        match &id.prediction {
            Prediction::Binary(p) => {
                bytes.push(0);
                bytes.extend_from_slice(&p.to_le_bytes());
            }
            Prediction::Classes(ps) => {
                let ps = &ps[..ps.len().min(MAX_CLASSES)];
                bytes.push(1);
                bytes.push(ps.len() as u8);
                for p in ps {
                    let q = (f64::from(p.clamp(0.0, 1.0)) * 65535.0).round() as u16;
                    bytes.extend_from_slice(&q.to_le_bytes());
                }
            }
        }
        let mut mac = self.mac();
        mac.update(&bytes);
        let tag = mac.finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes `text` and checks its signature.
    pub fn verify(&self, text: &str) -> Result<PredictionId, IdError> {
        if text.is_empty() || text.len() > MAX_ID_CHARS {
            return Err(IdError::Garbled);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| IdError::Garbled)?;
        if bytes.len() <= TAG_BYTES {
            return Err(IdError::Garbled);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
        let id = parse(body).ok_or(IdError::Garbled)?;
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| IdError::Forged)?;
        Ok(id)
    }
}

/// A cursor over the id's bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }
}

fn parse(body: &[u8]) -> Option<PredictionId> {
    let mut r = Reader(body);
    if r.u8()? != FORMAT {
        return None;
    }
    let arm = Arm::from_code(r.u8()?)?;
    let name_len = usize::from(r.u8()?);
    if name_len == 0 || name_len > MAX_NAME_BYTES {
        return None;
    }
    let model = std::str::from_utf8(r.take(name_len)?).ok()?.to_owned();
    let version = u64::from_le_bytes(r.array()?);
    let served_at_ms = i64::from_le_bytes(r.array()?);
    let nonce = u64::from_le_bytes(r.array()?);
    let prediction = match r.u8()? {
        0 => {
            let p = f32::from_le_bytes(r.array()?);
            if !(0.0..=1.0).contains(&p) {
                return None;
            }
            Prediction::Binary(p)
        }
        1 => {
            let k = usize::from(r.u8()?);
            if !(2..=MAX_CLASSES).contains(&k) {
                return None;
            }
            let mut ps = Vec::with_capacity(k);
            for _ in 0..k {
                ps.push(f32::from(u16::from_le_bytes(r.array()?)) / 65535.0);
            }
            Prediction::Classes(ps)
        }
        _ => return None,
    };
    if !r.0.is_empty() || version == 0 {
        return None;
    }
    Some(PredictionId {
        model,
        version,
        arm,
        served_at_ms,
        nonce,
        prediction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> IdKey {
        IdKey::new(vec![byte; 32]).unwrap()
    }

    fn sample(prediction: Prediction) -> PredictionId {
        PredictionId {
            model: "churn".into(),
            version: 7,
            arm: Arm::Canary,
            served_at_ms: 1_764_000_000_123,
            nonce: 0xdead_beef_0042,
            prediction,
        }
    }

    #[test]
    fn ids_round_trip_through_any_holder_of_the_key() {
        let binary = sample(Prediction::Binary(0.8125));
        let text = key(1).sign(&binary);
        assert_eq!(key(1).verify(&text), Ok(binary));
        let classes = sample(Prediction::Classes(vec![0.1, 0.2, 0.7]));
        let decoded = key(1).verify(&key(1).sign(&classes)).unwrap();
        let Prediction::Classes(ps) = decoded.prediction else {
            panic!("classes expected")
        };
        for (got, want) in ps.iter().zip([0.1, 0.2, 0.7]) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        assert!(text.len() < 100, "{} chars", text.len());
    }

    #[test]
    fn another_key_or_any_changed_character_is_refused() {
        let text = key(1).sign(&sample(Prediction::Binary(0.5)));
        assert_eq!(key(2).verify(&text), Err(IdError::Forged));
        // Changing any one character either garbles the layout or breaks
        // the signature; it never yields another valid id.
        let alphabet: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .chars()
                .collect();
        for position in 0..text.len() {
            let mut chars: Vec<char> = text.chars().collect();
            let original = chars[position];
            chars[position] = alphabet.iter().copied().find(|c| *c != original).unwrap();
            let changed: String = chars.into_iter().collect();
            assert!(key(1).verify(&changed).is_err(), "position {position}");
        }
        for garbled in ["", "not base64!", "AAAA", &"A".repeat(300)] {
            assert_eq!(key(1).verify(garbled), Err(IdError::Garbled), "{garbled}");
        }
    }

    #[test]
    fn the_tag_is_the_keys_hmac_of_the_body_for_every_id_signed() {
        let key = key(4);
        for nonce in 0..3 {
            let id = PredictionId {
                nonce,
                ..sample(Prediction::Binary(0.25))
            };
            let bytes = URL_SAFE_NO_PAD.decode(key.sign(&id)).unwrap();
            let (body, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
            // Keyed afresh from the key's bytes, as any HMAC-SHA256 would.
            let mut fresh = <Hmac<Sha256> as Mac>::new_from_slice(&[4; 32]).unwrap();
            fresh.update(body);
            assert_eq!(
                tag,
                &fresh.finalize().into_bytes()[..TAG_BYTES],
                "id {nonce}"
            );
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(IdKey::new(vec![0; 15]).is_err());
        assert_eq!(format!("{:?}", key(3)), "IdKey(<redacted>)");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any text is refused or verified, never a panic; any bytes that
        /// decode as base64 likewise.
        #[test]
        fn arbitrary_ids_never_panic(chars in proptest::collection::vec(any::<char>(), 0..300),
                                     bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let key = IdKey::new(vec![3; 32]).unwrap();
            let text: String = chars.into_iter().collect();
            let _ = key.verify(&text);
            let encoded = URL_SAFE_NO_PAD.encode(&bytes);
            prop_assert!(key.verify(&encoded).is_err(), "random bytes never carry our signature");
        }

        /// Every prediction survives signing and verification.
        #[test]
        fn signed_ids_round_trip(version in 1u64.., served in any::<i64>(), nonce in any::<u64>(),
                                 p in 0.0f32..=1.0, arm in 0usize..4) {
            let key = IdKey::new(vec![5; 32]).unwrap();
            let id = PredictionId {
                model: "churn".into(),
                version,
                arm: Arm::ALL[arm],
                served_at_ms: served,
                nonce,
                prediction: Prediction::Binary(p),
            };
            prop_assert_eq!(key.verify(&key.sign(&id)), Ok(id));
        }
    }
}
