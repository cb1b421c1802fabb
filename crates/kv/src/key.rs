//! What a key may be.

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes (512 KiB).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// Why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty.
    #[error("the key is empty")]
    Empty,
    /// Too long.
    #[error("the key is {0} bytes long (at most {MAX_KEY_BYTES})")]
    TooLong(usize),
    /// A control character.
    #[error("the key contains a control character ({0:?})")]
    Control(char),
    /// A `..` segment.
    #[error("the key has a `..` segment")]
    DotDot,
    /// Starts with `/` or has an empty segment (`a//b`).
    #[error("the key has an empty segment (a leading `/` or `//`)")]
    EmptySegment,
}

/// Check a key: non-empty UTF-8 (the type guarantees it), at most [`MAX_KEY_BYTES`], no control
/// characters, no `..` segment, no empty segment (a trailing `/` is allowed: `dir/`).
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(KeyError::Control(c));
    }
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    for segment in trimmed.split('/') {
        if segment == ".." {
            return Err(KeyError::DotDot);
        }
        if segment.is_empty() {
            return Err(KeyError::EmptySegment);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in [
            "a",
            "services/web/config",
            "dir/",
            "ünïcode/ключ",
            "a.b-c_d",
        ] {
            assert_eq!(validate_key(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert_eq!(validate_key("a/../b"), Err(KeyError::DotDot));
        assert_eq!(validate_key(".."), Err(KeyError::DotDot));
        assert_eq!(validate_key("/a"), Err(KeyError::EmptySegment));
        assert_eq!(validate_key("a//b"), Err(KeyError::EmptySegment));
        assert_eq!(validate_key("a\nb"), Err(KeyError::Control('\n')));
        assert_eq!(validate_key(&"k".repeat(513)), Err(KeyError::TooLong(513)));
        assert_eq!(validate_key("a/..b"), Ok(()));
    }
}
