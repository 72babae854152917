//! `[control]`: the control socket `certrotd status`, `rotate` and `history` talk to.

use std::fmt;
use std::path::PathBuf;

use super::DEFAULT_SOCKET;
use super::layer::{ConfigError, Sources, Val, over};
use super::validate::check_node_path;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// `[control]`: the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlSettings {
    /// The socket's node path (see [`Settings::in_root`]).
    pub socket: PathBuf,
    /// Its permission bits, set before it accepts connections; written as octal text ("0660").
    #[serde(serialize_with = "octal_mode")]
    pub socket_mode: u32,
    /// The group it is given; empty keeps the daemon's own group (root's).
    pub socket_group: String,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: 0o660,
            socket_group: String::new(),
        }
    }
}

impl ControlSettings {
    /// The group to give the socket, if any.
    pub fn group(&self) -> Option<&str> {
        Some(self.socket_group.as_str()).filter(|g| !g.is_empty())
    }
}

/// Writes a mode as the configuration spells it: "0660".
pub(super) fn octal_mode<S: serde::Serializer>(
    mode: &u32,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{mode:04o}"))
}

/// A file mode as written: octal text ("0660"); a TOML integer is taken only to be refused during
/// resolution, where the error can name the key and say how to write it.
#[derive(Debug, Clone)]
pub(super) enum ModeText {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for ModeText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = ModeText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"an octal file mode such as "0660""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ModeText, E> {
                Ok(ModeText::Text(s.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ModeText, E> {
                Ok(ModeText::Number(n))
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}

/// Parses and checks a socket's mode.
pub(super) fn socket_mode(written: &ModeText) -> Result<u32, String> {
    let mode = match written {
        ModeText::Text(text) => {
            let digits = text.strip_prefix("0o").unwrap_or(text);
            if !(3..=4).contains(&digits.len())
                || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
            {
                return Err(format!(
                    "{text:?} is not an octal file mode such as \"0660\""
                ));
            }
            u32::from_str_radix(digits, 8).map_err(|e| format!("{text:?}: {e}"))?
        }
        // `660` is decimal to TOML and `0o660` is indistinguishable from decimal 432 by the
        // time it gets here: rather than guess, ask for the unambiguous form.
        ModeText::Number(n) => {
            return Err(format!(
                "{n}: write the mode as octal text, such as \"0660\" (TOML reads a bare number as \
                 decimal)"
            ));
        }
    };
    if mode > 0o777 {
        return Err(format!(
            "{mode:o}: only the permission bits (at most \"0777\") apply to a socket"
        ));
    }
    if mode & 0o200 == 0 {
        return Err(format!(
            "\"{mode:04o}\": the owner needs write permission, which connecting to a socket takes"
        ));
    }
    Ok(mode)
}

/// Checks a group name as `groupadd` would take it; whether the group exists is for the machine
/// the daemon runs on to say, when it binds the socket.
pub(super) fn check_group_name(name: &str) -> Result<(), String> {
    if name.len() > 32 {
        return Err("longer than 32 characters".to_owned());
    }
    if name.starts_with('-') {
        return Err("must not start with '-'".to_owned());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("only letters, digits, '_', '-' and '.' are allowed".to_owned());
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [control] table")]
pub(super) struct ControlLayer {
    pub(super) socket: Option<Val<PathBuf>>,
    pub(super) socket_mode: Option<Val<ModeText>>,
    pub(super) socket_group: Option<Val<String>>,
}

impl ControlLayer {
    pub(super) fn merge(&mut self, later: ControlLayer, file: usize) {
        over(&mut self.socket, later.socket, file);
        over(&mut self.socket_mode, later.socket_mode, file);
        over(&mut self.socket_group, later.socket_group, file);
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<ControlSettings, ConfigError> {
        let mut settings = ControlSettings::default();
        if let Some(written) = &self.socket {
            check_node_path(&written.value)
                .and_then(|()| match written.value.file_name() {
                    Some(_) => Ok(()),
                    None => Err("must name the socket file, not only a directory".to_owned()),
                })
                .map_err(|e| {
                    sources.invalid(
                        &written.at,
                        format!("control.socket = {:?}: {e}", written.value.display()),
                    )
                })?;
            settings.socket = written.value.clone();
        }
        if let Some(written) = &self.socket_mode {
            settings.socket_mode = socket_mode(&written.value)
                .map_err(|e| sources.invalid(&written.at, format!("control.socket_mode = {e}")))?;
        }
        if let Some(written) = &self.socket_group {
            check_group_name(&written.value).map_err(|e| {
                sources.invalid(
                    &written.at,
                    format!("control.socket_group = {:?}: {e}", written.value),
                )
            })?;
            settings.socket_group = written.value.clone();
        }
        Ok(settings)
    }
}
