//! Password hashes as RabbitMQ stores them (`rabbit_password`), so that a
//! user exported from RabbitMQ logs in to warren with the same password.
//!
//! ```text
//! stored  = salt (4 random bytes) ++ H(salt ++ UTF-8 password)
//! in JSON = "password_hash": base64(stored),
//!           "hashing_algorithm": "rabbit_password_hashing_sha256"
//!                                (or _sha512, or _md5 before RabbitMQ 3.6)
//! ```
//!
//! New hashes (the guest user, `--default-user`, a cleartext `password` in
//! an imported file) use SHA-256, RabbitMQ's default.

use crate::util::digest;

/// Bytes of salt in front of every stored hash (`rabbit_password:generate_salt`).
pub(crate) const SALT_LEN: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HashingAlgorithm {
    Sha256,
    Sha512,
    Md5,
}

impl HashingAlgorithm {
    /// The module name RabbitMQ writes as `hashing_algorithm`.
    pub(crate) fn rabbit_name(self) -> &'static str {
        match self {
            HashingAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashingAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
            HashingAlgorithm::Md5 => "rabbit_password_hashing_md5",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<HashingAlgorithm> {
        [
            HashingAlgorithm::Sha256,
            HashingAlgorithm::Sha512,
            HashingAlgorithm::Md5,
        ]
        .into_iter()
        .find(|a| a.rabbit_name() == name)
    }

    pub(crate) fn digest_len(self) -> usize {
        match self {
            HashingAlgorithm::Sha256 => 32,
            HashingAlgorithm::Sha512 => 64,
            HashingAlgorithm::Md5 => 16,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashingAlgorithm::Sha256 => digest::sha256(data).to_vec(),
            HashingAlgorithm::Sha512 => digest::sha512(data).to_vec(),
            HashingAlgorithm::Md5 => digest::md5(data).to_vec(),
        }
    }
}

/// A salted password hash: what RabbitMQ keeps instead of the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash {
    pub(crate) algorithm: HashingAlgorithm,
    /// salt ++ digest, exactly as RabbitMQ stores it (before base64).
    salted: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the hash itself, not even in debug logs.
        write!(f, "PasswordHash({})", self.algorithm.rabbit_name())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HashError {
    NotBase64,
    /// The decoded hash is not salt + one digest long.
    Length {
        found: usize,
        expected: usize,
    },
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::NotBase64 => write!(f, "password_hash is not valid base64"),
            HashError::Length { found, expected } => write!(
                f,
                "password_hash decodes to {} bytes, but this hashing_algorithm makes {}",
                found, expected
            ),
        }
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub(crate) fn new(algorithm: HashingAlgorithm, password: &str) -> PasswordHash {
        PasswordHash::with_salt(algorithm, random_salt(), password)
    }

    pub(crate) fn with_salt(
        algorithm: HashingAlgorithm,
        salt: [u8; SALT_LEN],
        password: &str,
    ) -> PasswordHash {
        let mut input = Vec::with_capacity(SALT_LEN + password.len());
        input.extend_from_slice(&salt);
        input.extend_from_slice(password.as_bytes());
        let mut salted = salt.to_vec();
        salted.extend_from_slice(&algorithm.digest(&input));
        PasswordHash { algorithm, salted }
    }

    /// Reads RabbitMQ's `password_hash` (base64).
    pub(crate) fn from_base64(
        algorithm: HashingAlgorithm,
        text: &str,
    ) -> Result<PasswordHash, HashError> {
        let salted = base64_decode(text).ok_or(HashError::NotBase64)?;
        let expected = SALT_LEN + algorithm.digest_len();
        if salted.len() != expected {
            return Err(HashError::Length {
                found: salted.len(),
                expected,
            });
        }
        Ok(PasswordHash { algorithm, salted })
    }

    pub(crate) fn to_base64(&self) -> String {
        base64_encode(&self.salted)
    }

    /// True if `password` hashes, with this hash's salt, to this hash
    /// (`rabbit_password:hash/2` and a comparison, as
    /// `rabbit_auth_backend_internal` checks a login).
    pub(crate) fn verify(&self, password: &str) -> bool {
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&self.salted[..SALT_LEN]);
        let candidate = PasswordHash::with_salt(self.algorithm, salt, password);
        constant_time_eq(&candidate.salted, &self.salted)
    }
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    // SAFETY: getrandom(2) writes at most `salt.len()` bytes into the buffer.
    let filled = unsafe { libc::getrandom(salt.as_mut_ptr().cast(), salt.len(), 0) };
    if filled != SALT_LEN as isize {
        // Without the kernel's generator (never seen on Linux 3.17+), the
        // clock still makes two salts differ; a salt needs to be unique,
        // not secret.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        salt = nanos.to_be_bytes();
    }
    salt
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 section 4) with padding, as Erlang's `base64:encode`.
pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let bytes = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64; padding may be left out. None for anything else.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2 || trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in trimmed.bytes() {
        let value = BASE64_ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Bits left over must be zero padding, or the text was not made by an encoder.
    if acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes RabbitMQ 3.10.8 made (`rabbitmqctl add_user`, then
    /// `rabbit_password:hash/2` with each module) and exported; the same
    /// file is `tests/data/rabbitmq-3.10.8-export.json`.
    #[test]
    fn verifies_hashes_made_by_rabbitmq() {
        let cases = [
            (
                HashingAlgorithm::Sha256,
                "lZnWzxjPLyY6i65SylEMNBRZcR/fZwRO9JcgG+A4T3AFn+aa",
                "alice-secret",
            ),
            (
                HashingAlgorithm::Sha256,
                "KeALUr6W3YTScqi5rSFB6/5lNc6dtlCgohS0yOSJ49FTkIZI",
                "b0b p@ss ünïcode",
            ),
            (
                HashingAlgorithm::Sha512,
                "xQEEptJfsXY9dhDi7RYtZZ//sM/VI6R3tPrThEXO2f3M5D/PBIKtTL3Ic3dIU7/it4/zg2dQKBp//h1toLCiNLvBmEs=",
                "carol-512",
            ),
            (
                HashingAlgorithm::Md5,
                "+cEHEpDAUHNVnHQizc0yPIPNXKw=",
                "dave-md5",
            ),
            (
                HashingAlgorithm::Sha256,
                "iuSQq6SrhZ0TsulcwewiTQNBrKx/9R5rLR8ChVYQw3bKlJGw",
                "guest",
            ),
        ];
        for (algorithm, stored, password) in cases {
            let hash = PasswordHash::from_base64(algorithm, stored).unwrap();
            assert!(hash.verify(password), "{password}");
            assert!(!hash.verify("wrong"), "{password}");
            assert!(!hash.verify(""), "{password}");
            assert_eq!(hash.to_base64(), stored);
        }
    }

    #[test]
    fn new_hashes_verify_and_are_salted() {
        let a = PasswordHash::new(HashingAlgorithm::Sha256, "secret");
        let b = PasswordHash::new(HashingAlgorithm::Sha256, "secret");
        assert!(a.verify("secret") && b.verify("secret"));
        assert!(!a.verify("Secret"));
        assert_ne!(a.to_base64(), b.to_base64(), "two salts should differ");
        let round = PasswordHash::from_base64(HashingAlgorithm::Sha256, &a.to_base64()).unwrap();
        assert!(round.verify("secret"));
    }

    #[test]
    fn wrong_lengths_and_bad_base64_are_refused() {
        assert_eq!(
            PasswordHash::from_base64(HashingAlgorithm::Sha512, "+cEHEpDAUHNVnHQizc0yPIPNXKw="),
            Err(HashError::Length {
                found: 20,
                expected: 68
            })
        );
        assert_eq!(
            PasswordHash::from_base64(HashingAlgorithm::Md5, "not base64!"),
            Err(HashError::NotBase64)
        );
    }

    #[test]
    fn base64_round_trips_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_decode("Zg").unwrap(), b"f");
        for bad in ["Z", "Zh==", "Zm9v!", "Zg===", "Z=g="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)).unwrap(), all);
    }

    #[test]
    fn algorithm_names_are_rabbitmqs() {
        for a in [
            HashingAlgorithm::Sha256,
            HashingAlgorithm::Sha512,
            HashingAlgorithm::Md5,
        ] {
            assert_eq!(HashingAlgorithm::parse(a.rabbit_name()), Some(a));
        }
        assert_eq!(
            HashingAlgorithm::parse("rabbit_password_hashing_sha1"),
            None
        );
    }
}
