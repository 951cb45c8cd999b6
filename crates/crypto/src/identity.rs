//! Node identity: the X25519 key pair, its key file, and the overlay address and /64 derived from
//! the public key (docs/protocol.md §2.1, §2.2, §6.1).

use core::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use wire::babel::Subnet;
use zeroize::Zeroizing;

use crate::data::SharedSecret;

/// Length of a secret key, a public key and a shared secret.
pub const KEY_LEN: usize = 32;

/// An X25519 static secret. Stored as the raw 32 bytes of the key file (unclamped); clamping
/// happens when it is used, as with x25519-dalek's `StaticSecret`.
#[derive(Clone)]
pub struct SecretKey(x25519_dalek::StaticSecret);

impl SecretKey {
    /// Wraps raw key-file bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        SecretKey(x25519_dalek::StaticSecret::from(bytes))
    }

    /// A fresh key from the OS random source.
    pub fn generate() -> Result<SecretKey, getrandom::Error> {
        let mut b = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut b[..])?;
        Ok(SecretKey::from_bytes(*b))
    }

    /// The raw bytes, as written to the key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The raw X25519 output with `peer`, which is the AES-256-GCM key for that peer. `None` if
    /// `peer` is a low-order point (the output would be all zeros, a key everyone knows).
    pub fn shared_secret(&self, peer: &PublicKey) -> Option<SharedSecret> {
        let s = self
            .0
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        s.was_contributory()
            .then(|| SharedSecret::from_bytes(s.to_bytes()))
    }

    /// Reads the first 32 bytes of `path` (extra bytes are ignored, as mycelium does).
    pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
        let err = |kind| KeyFileError {
            path: path.to_path_buf(),
            kind,
        };
        let mut f = fs::File::open(path).map_err(|e| err(KeyFileErrorKind::Io(e)))?;
        let mut b = Zeroizing::new([0u8; KEY_LEN]);
        let mut have = 0;
        while have < KEY_LEN {
            match f.read(&mut b[have..]) {
                Ok(0) => return Err(err(KeyFileErrorKind::TooShort { len: have })),
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(KeyFileErrorKind::Io(e))),
            }
        }
        Ok(SecretKey::from_bytes(*b))
    }

    /// Writes the raw 32 bytes to a new file at `path` with mode 0600, creating parent
    /// directories. Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let err = |e| KeyFileError {
            path: path.to_path_buf(),
            kind: KeyFileErrorKind::Io(e),
        };
        create_parent(path).map_err(err)?;
        self.write_new(path).map_err(err)
    }

    /// Writes the raw 32 bytes to `path` with mode 0600, replacing a file that is there, creating
    /// parent directories. Atomic: the key goes to a new temporary file in the same directory,
    /// is synced, and is renamed over `path`, so a crash leaves the old key or the new one, never
    /// a torn or empty file.
    pub fn save_replacing(&self, path: &Path) -> Result<(), KeyFileError> {
        let err = |e| KeyFileError {
            path: path.to_path_buf(),
            kind: KeyFileErrorKind::Io(e),
        };
        let dir = create_parent(path).map_err(err)?;
        let name = path.file_name().ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path names no file",
            ))
        })?;
        // A fresh random name, opened with `create_new`: never a file someone else prepared.
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(|e| KeyFileError {
            path: path.to_path_buf(),
            kind: KeyFileErrorKind::Random(e),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{:016x}.tmp", u64::from_ne_bytes(tag)));
        let tmp = dir.join(tmp_name);
        let written = self.write_new(&tmp).and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(err(e));
        }
        // The rename itself is durable once the directory is synced.
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }

    /// Creates `path` (which must not exist) with mode 0600 and writes the key into it, synced.
    fn write_new(&self, path: &Path) -> io::Result<()> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        f.write_all(&self.to_bytes()[..])?;
        f.sync_all()
    }

    /// Loads `path`, or generates and saves a new key there if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyFileError> {
        match SecretKey::load(path) {
            Err(KeyFileError {
                kind: KeyFileErrorKind::Io(e),
                ..
            }) if e.kind() == io::ErrorKind::NotFound => {
                let key = SecretKey::generate().map_err(|e| KeyFileError {
                    path: path.to_path_buf(),
                    kind: KeyFileErrorKind::Random(e),
                })?;
                key.save(path)?;
                Ok(key)
            }
            other => other,
        }
    }
}

/// Creates the directory `path` goes in; returns it (`.` for a bare file name).
fn create_parent(path: &Path) -> io::Result<&Path> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            Ok(dir)
        }
        None => Ok(Path::new(".")),
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(<redacted>, public {})", self.public_key())
    }
}

/// A key-file problem, naming the file.
#[derive(Debug)]
pub struct KeyFileError {
    pub path: PathBuf,
    pub kind: KeyFileErrorKind,
}

#[derive(Debug)]
pub enum KeyFileErrorKind {
    Io(io::Error),
    /// The file holds fewer than 32 bytes.
    TooShort {
        len: usize,
    },
    Random(getrandom::Error),
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.kind {
            KeyFileErrorKind::Io(e) => write!(f, "key file {p}: {e}"),
            KeyFileErrorKind::TooShort { len } => {
                write!(f, "key file {p}: holds {len} bytes, a key needs {KEY_LEN}")
            }
            KeyFileErrorKind::Random(e) => {
                write!(f, "key file {p}: no randomness for a new key: {e}")
            }
        }
    }
}

// The message already ends with the cause (`key file P: <io error>`), so no `source()`: a caller
// that prints the chain (`{:#}`) would name the cause twice. `kind` keeps the error to match on.
impl std::error::Error for KeyFileError {}

/// An X25519 public key. Displays and parses as 64 hex digits (lowercase on output).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The overlay address (docs/protocol.md §2.2).
    pub fn address(&self) -> Ipv6Addr {
        address_from_public_key(&self.0)
    }

    /// The node's /64: the address with its host half cleared.
    pub fn subnet(&self) -> Subnet {
        Subnet::slash64(self.address())
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(b: [u8; KEY_LEN]) -> Self {
        PublicKey(b)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A public key string that is not 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParsePublicKeyError {
    /// Not 64 characters long.
    Length(usize),
    /// A character that is not a hex digit, at this byte offset.
    NotHex(usize),
}

impl fmt::Display for ParsePublicKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParsePublicKeyError::Length(n) => {
                write!(f, "public key must be 64 hex digits, got {n} characters")
            }
            ParsePublicKeyError::NotHex(i) => {
                write!(f, "public key has a non-hex character at offset {i}")
            }
        }
    }
}

impl std::error::Error for ParsePublicKeyError {}

impl core::str::FromStr for PublicKey {
    type Err = ParsePublicKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 2 * KEY_LEN {
            return Err(ParsePublicKeyError::Length(b.len()));
        }
        let nibble = |i: usize| {
            (b[i] as char)
                .to_digit(16)
                .map(|d| d as u8)
                .ok_or(ParsePublicKeyError::NotHex(i))
        };
        let mut k = [0u8; KEY_LEN];
        for (i, out) in k.iter_mut().enumerate() {
            *out = nibble(2 * i)? << 4 | nibble(2 * i + 1)?;
        }
        Ok(PublicKey(k))
    }
}

/// The overlay, `400::/7` (docs/protocol.md §2.3): the space every [`address_from_public_key`]
/// lies in, and the only one the routing core accepts routes and requests for.
pub fn overlay() -> Subnet {
    Subnet::new(Ipv6Addr::new(0x400, 0, 0, 0, 0, 0, 0, 0), 7).unwrap_or_else(|| unreachable!())
}

/// The overlay address of a public key (docs/protocol.md §2.2): the first 16 bytes of BLAKE3(key),
/// with the first byte replaced by `0x04 | parity(popcount(h[0]))`, so it always lies in 400::/7.
pub fn address_from_public_key(key: &[u8; KEY_LEN]) -> Ipv6Addr {
    let h = blake3::hash(key);
    let mut a = [0u8; 16];
    a.copy_from_slice(&h.as_bytes()[..16]);
    a[0] = 0x04 | (a[0].count_ones() as u8 & 1);
    Ipv6Addr::from(a)
}
