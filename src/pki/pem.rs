//! Reading certificate material from disk: size-capped reads and PEM block extraction.
//!
//! Real files carry text before the first block (easy-rsa writes the decoded certificate there),
//! CRLF line endings, bundles of several blocks, and sometimes DER where PEM was expected. All of those
//! are understood here; what cannot be understood becomes a [`ReadError`] that names the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroize as _;

use super::secret::SecretBytes;

/// Certificate files are a few kilobytes; anything past this is not a certificate file and is not read
/// whole (a 50 MB log dropped into the PKI directory must not cost 50 MB).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One PEM block. Its contents are zeroed when it is dropped: any block may be a private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    /// The label between `BEGIN ` and the dashes, e.g. `CERTIFICATE` or `RSA PRIVATE KEY`.
    pub label: String,
    /// The decoded contents.
    pub der: Vec<u8>,
}

impl Drop for Block {
    fn drop(&mut self) {
        self.der.zeroize();
    }
}

impl std::fmt::Debug for Block {
    // Private key blocks pass through here: never print the contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({}, {} bytes)", self.label, self.der.len())
    }
}

/// Why a file could not be read as certificate material.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file does not exist (or a symlink dangles).
    #[error("{path}: file not found")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// Something other than a regular file stands at the path.
    #[error("{path}: not a regular file ({what})")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What is there instead.
        what: &'static str,
    },
    /// The file is larger than any certificate file.
    #[error(
        "{path}: file is {size} bytes, larger than the {max} bytes a certificate file may have"
    )]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// Reading failed (permissions, I/O).
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something stands at the path that certrotd refuses to follow or open (a planted symlink).
    #[error("{path}: {reason}")]
    Refused {
        /// The path.
        path: PathBuf,
        /// What is there and why it is refused.
        reason: String,
    },
    /// The last component is a symlink (only from [`read_capped_nofollow`]).
    #[error("{path}: is a symbolic link")]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// The file is empty.
    #[error("{path}: file is empty")]
    Empty {
        /// The path.
        path: PathBuf,
    },
    /// No PEM block in the file.
    #[error("{path}: no PEM block found{hint}")]
    NoPem {
        /// The path.
        path: PathBuf,
        /// A hint, e.g. that the file looks like DER.
        hint: &'static str,
    },
    /// A PEM block is malformed (truncated, bad base64).
    #[error("{path}: malformed PEM block: {reason}")]
    BadPem {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a regular file, refusing directories, devices, FIFOs and oversized files. The type is
/// checked with `fstat` on an `O_PATH` handle before the file is opened for reading, so a FIFO
/// cannot block the inventory and a device node is never opened.
/// The contents are zeroed when dropped: the file may hold a private key.
pub fn read_capped(path: &Path) -> Result<SecretBytes, ReadError> {
    read_file(path, true)
}

/// [`read_capped`], but refusing to follow a symlink in the last component
/// ([`ReadError::Symlink`]), for callers that resolve links themselves.
pub fn read_capped_nofollow(path: &Path) -> Result<SecretBytes, ReadError> {
    read_file(path, false)
}

fn read_file(path: &Path, follow: bool) -> Result<SecretBytes, ReadError> {
    use nix::fcntl::{AT_FDCWD, ResolveFlag};
    read_capped_at(AT_FDCWD, path, path, follow, ResolveFlag::empty())
}

/// Reads the regular file at `rel` relative to the directory `dir` (with `resolve` restricting
/// the walk, e.g. `RESOLVE_NO_SYMLINKS`); `path` names it in errors. Nothing but a regular file is
/// ever opened for reading: the type is checked on an `O_PATH` handle first (see
/// [`crate::root::fd::open_regular`]), so a device node or FIFO is reported, never opened.
pub fn read_capped_at(
    dir: impl std::os::fd::AsFd,
    rel: &Path,
    path: &Path,
    follow_final: bool,
    resolve: nix::fcntl::ResolveFlag,
) -> Result<SecretBytes, ReadError> {
    use crate::root::fd::{Kind, OpenError, open_regular};
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let (mut file, seen) = match open_regular(dir, rel, follow_final, resolve) {
        Ok(opened) => opened,
        Err(OpenError::Missing) => {
            return Err(ReadError::Missing {
                path: path.to_owned(),
            });
        }
        Err(OpenError::Symlink) => {
            return Err(ReadError::Symlink {
                path: path.to_owned(),
            });
        }
        Err(OpenError::NotRegular(kind)) => {
            let what = match kind {
                Kind::Dir => "a directory",
                Kind::CharDevice => "a character device",
                Kind::BlockDevice => "a block device",
                Kind::Fifo => "a fifo",
                Kind::Socket => "a socket",
                Kind::Symlink | Kind::File => "a symlink",
            };
            return Err(ReadError::NotAFile {
                path: path.to_owned(),
                what,
            });
        }
        Err(OpenError::Io(e)) => return Err(io(e)),
    };
    let meta_len = seen.size;
    if meta_len > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            size: meta_len,
            max: MAX_FILE_BYTES,
        });
    }
    // The size is known: read exactly into place (read_to_end would stat the file again, and
    // growing the buffer would leave copies of a key behind).
    let mut buf = SecretBytes::new(vec![0u8; meta_len as usize]);
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf.as_mut()[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    buf.truncate(filled);
    if buf.is_empty() {
        return Err(ReadError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(buf)
}

/// Every PEM block of a buffer, in order. Text outside blocks is skipped.
pub fn blocks(path: &Path, data: &[u8]) -> Result<Vec<Block>, ReadError> {
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(data) {
        match item {
            Ok(p) => out.push(Block {
                label: p.label,
                der: p.contents,
            }),
            Err(x509_parser::error::PEMError::MissingHeader) => break,
            Err(e) => {
                return Err(ReadError::BadPem {
                    path: path.to_owned(),
                    reason: pem_reason(&e),
                });
            }
        }
    }
    if out.is_empty() {
        let hint = if data.first() == Some(&0x30) {
            " (the file looks like DER; Kubernetes components read PEM)"
        } else {
            ""
        };
        return Err(ReadError::NoPem {
            path: path.to_owned(),
            hint,
        });
    }
    Ok(out)
}

fn pem_reason(e: &x509_parser::error::PEMError) -> String {
    use x509_parser::error::PEMError as E;
    match e {
        E::IncompletePEM => "truncated: no END line".into(),
        E::Base64DecodeError => "the base64 body does not decode".into(),
        E::InvalidHeader => "the BEGIN line is malformed".into(),
        other => other.to_string(),
    }
}

/// Encodes DER as one PEM block with 64-character lines. The block may be a private key: the
/// base64 text is wiped when done, and the result is sized up front so that it never reallocates
/// (which would leave a copy in freed memory); wrap it in a `SecretString` to wipe it too.
pub fn encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    // BEGIN and END lines, and one newline per line of at most 64 characters.
    let mut s = String::with_capacity(b64.len() + b64.len() / 64 + 1 + 2 * label.len() + 32);
    s.push_str("-----BEGIN ");
    s.push_str(label);
    s.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END ");
    s.push_str(label);
    s.push_str("-----\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_before_blocks_and_crlf_are_understood() {
        let body = encode("CERTIFICATE", b"\x30\x03\x02\x01\x01");
        let data = format!(
            "Certificate:\n    Data: blah\n{}",
            body.replace('\n', "\r\n")
        );
        let b = blocks(Path::new("x"), data.as_bytes()).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].label, "CERTIFICATE");
        assert_eq!(b[0].der, b"\x30\x03\x02\x01\x01");
    }

    #[test]
    fn truncated_and_der_inputs_are_named() {
        let body = encode("CERTIFICATE", b"0123456789");
        let cut = &body[..body.len() - 30];
        let e = blocks(Path::new("/p/x.crt"), cut.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("/p/x.crt"), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = blocks(Path::new("/p/d.crt"), b"\x30\x82\x01\x00").unwrap_err();
        assert!(e.to_string().contains("DER"), "{e}");
    }

    #[test]
    fn directories_and_fifos_are_not_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let e = read_capped(tmp.path()).unwrap_err();
        assert!(matches!(e, ReadError::NotAFile { .. }));
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_capped(&fifo).unwrap_err();
        assert!(matches!(e, ReadError::NotAFile { what: "a fifo", .. }));
        // /dev/zero never ends: it must be refused before anything is read from it.
        let e = read_capped(Path::new("/dev/zero")).unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::NotAFile {
                    what: "a character device",
                    ..
                }
            ),
            "{e}"
        );
    }
}
