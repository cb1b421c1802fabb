//! Metric paths: dotted components of ASCII letters, digits and `_ - % : ; = @ + , # ~`.
//! Glob characters, spaces, slashes and quotes are kept out so that every stored name can be
//! matched, listed and written back to carbon unchanged.

/// Longest accepted path, in bytes.
pub const MAX_LEN: usize = 255;

/// Whether `b` may appear inside a path component.
#[inline]
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'_' | b'-' | b'%' | b':' | b';' | b'=' | b'@' | b'+' | b',' | b'#' | b'~'
        )
}

/// Whether `name` is a storable metric path; the error says why not.
pub fn check(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty metric name");
    }
    if name.len() > MAX_LEN {
        return Err("metric name longer than 255 bytes");
    }
    if name[0] == b'.' || name[name.len() - 1] == b'.' || name.windows(2).any(|w| w == b"..") {
        return Err("empty path component in metric name");
    }
    if !name.iter().all(|&b| b == b'.' || is_name_byte(b)) {
        return Err("metric name has characters outside letters, digits and _-%:;=@+,#~.");
    }
    Ok(())
}

/// Whether `name` is a storable metric path.
pub fn is_valid(name: &str) -> bool {
    check(name.as_bytes()).is_ok()
}

/// Make free text usable as one or more path components: whitespace becomes `_`, `/` becomes
/// `-`, other refused bytes are dropped (the reference statsd's rule). `None` when nothing
/// valid is left.
pub fn sanitize(raw: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut last_space = false;
    for &b in raw {
        if b.is_ascii_whitespace() {
            if !last_space {
                out.push('_');
            }
            last_space = true;
            continue;
        }
        last_space = false;
        match b {
            b'/' => out.push('-'),
            b'.' => out.push('.'),
            b if is_name_byte(b) => out.push(char::from(b)),
            _ => {}
        }
    }
    check(out.as_bytes()).ok().map(|()| out)
}

/// Turn a label (a collector key, a perfdata label) into one path component.
pub fn component(label: &str) -> String {
    let mut out: String = label
        .bytes()
        .map(|b| if is_name_byte(b) { char::from(b) } else { '_' })
        .collect();
    out.truncate(100);
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_names() {
        assert!(is_valid("stats.counters.web-1.hits"));
        assert!(is_valid("collector.cpustats.cpuall.%idle"));
        for bad in ["", ".a", "a.", "a..b", "a b", "a/b", "a*", "a{b}", "é"] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(!is_valid(&"a".repeat(256)));
    }

    #[test]
    fn sanitize_like_the_reference_statsd() {
        assert_eq!(
            sanitize(b"my app/login  time").as_deref(),
            Some("my_app-login_time")
        );
        assert_eq!(sanitize(b"a$b").as_deref(), Some("ab"));
        assert_eq!(sanitize(b"$$$"), None);
        assert_eq!(sanitize(b"a..b"), None);
        assert_eq!(component("used space (GB)"), "used_space__GB_");
        assert_eq!(component(""), "_");
    }
}
