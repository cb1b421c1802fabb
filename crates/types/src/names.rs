//! What a name may look like: node names, groups, zones, check names, user event types.
//!
//! One set of rules for every place a name enters: configuration files, packs, the local API,
//! and the gossip wire (a peer's datagram is refused when one of its names breaks them). Names
//! end up in DNS labels, CLI tables, templates and handler commands; keeping them to a small,
//! printable alphabet means a name can never carry markup, control characters or shell syntax
//! into any of those places, whatever else goes wrong.

/// Longest node name (a DNS name).
pub const MAX_NODE_NAME: usize = 253;
/// Longest group or zone name (a DNS label).
pub const MAX_GROUP: usize = 63;
/// Longest check name (`<pack>/<file>`).
pub const MAX_CHECK_NAME: usize = 128;
/// Longest user event type.
pub const MAX_EVENT_TYPE: usize = 128;
/// Longest display name.
pub const MAX_DISPLAY_NAME: usize = 255;

/// Why a name is refused; the message names the offending character and says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

fn check(
    what: &str,
    name: &str,
    max: usize,
    allowed: fn(char) -> bool,
    alphabet: &str,
) -> Result<(), NameError> {
    if name.is_empty() || name.len() > max {
        return Err(NameError(format!(
            "{what} `{}` must be 1 to {max} characters",
            name.escape_default()
        )));
    }
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(NameError(format!(
            "{what} `{}` contains `{}`: use {alphabet}",
            name.escape_default(),
            bad.escape_default()
        )));
    }
    // A name that starts like an option (`-oProxyCommand=...`) must never reach a command line.
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        return Err(NameError(format!(
            "{what} `{}` must start with a letter, a digit or `_`",
            name.escape_default()
        )));
    }
    Ok(())
}

/// Node names: letters, digits, `-`, `_` and `.` (they become `<node>.name.<domain>` in DNS).
pub fn node_name(name: &str) -> Result<(), NameError> {
    check(
        "node name",
        name,
        MAX_NODE_NAME,
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
        "letters, digits, `-`, `_` and `.`",
    )
}

fn group_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+' | '=')
}

/// Group names: letters, digits and `-_.:@+=` (`zone::dc1`, `ec2-region::eu-west-1`).
pub fn group(name: &str) -> Result<(), NameError> {
    check(
        "group",
        name,
        MAX_GROUP,
        group_char,
        "letters, digits and `-_.:@+=`",
    )
}

/// Zone names: as groups.
pub fn zone(name: &str) -> Result<(), NameError> {
    check(
        "zone",
        name,
        MAX_GROUP,
        group_char,
        "letters, digits and `-_.:@+=`",
    )
}

/// Check names (`<pack>/<file>`): letters, digits and `-_.:@+=/`.
pub fn check_name(name: &str) -> Result<(), NameError> {
    check(
        "check name",
        name,
        MAX_CHECK_NAME,
        |c| group_char(c) || c == '/',
        "letters, digits and `-_.:@+=/` (rename the pack folder or file)",
    )
}

/// User event types (`deploy-done`): letters, digits and `-_.:@+=/`.
pub fn event_type(name: &str) -> Result<(), NameError> {
    check(
        "event type",
        name,
        MAX_EVENT_TYPE,
        |c| group_char(c) || c == '/',
        "letters, digits and `-_.:@+=/`",
    )
}

/// Longest service name or tag (a DNS label).
pub const MAX_SERVICE_NAME: usize = 63;
/// Longest service meta key.
pub const MAX_META_KEY: usize = 64;
/// Longest service meta value.
pub const MAX_META_VALUE: usize = 512;
/// Longest maintenance reason.
pub const MAX_REASON: usize = 256;

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
}

/// Service names (`web`): letters, digits, `-` and `_`, one DNS label (`web.service.<domain>`,
/// `_web._tcp.service.<domain>`).
pub fn service_name(name: &str) -> Result<(), NameError> {
    check(
        "service name",
        name,
        MAX_SERVICE_NAME,
        label_char,
        "letters, digits, `-` and `_`",
    )
}

/// Service tags (`primary`): as service names (`primary.web.service.<domain>`).
pub fn service_tag(name: &str) -> Result<(), NameError> {
    check(
        "service tag",
        name,
        MAX_SERVICE_NAME,
        label_char,
        "letters, digits, `-` and `_`",
    )
}

/// Keys of a service's `meta`: letters, digits and `-_.`.
pub fn meta_key(name: &str) -> Result<(), NameError> {
    check(
        "meta key",
        name,
        MAX_META_KEY,
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
        "letters, digits and `-_.`",
    )
}

/// Free text for people (a meta value, a maintenance reason): no control characters, at most
/// `max` bytes; `what` names it in the message.
pub fn text(what: &str, text: &str, max: usize) -> Result<(), NameError> {
    if text.len() > max {
        return Err(NameError(format!("{what} must be at most {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(NameError(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Display names are for people: any text without control characters, up to 255 bytes.
pub fn display_name(name: &str) -> Result<(), NameError> {
    if name.trim().is_empty() || name.len() > MAX_DISPLAY_NAME {
        return Err(NameError(format!(
            "display name must be 1 to {MAX_DISPLAY_NAME} bytes of text"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError(
            "display name must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// Agent versions as gossiped (`0.1.0`, `1.2.3-rc.1+build`).
pub fn version(text: &str) -> Result<(), NameError> {
    check(
        "version",
        text,
        32,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'),
        "letters, digits and `.-+`",
    )
}

/// Most bytes in a user event payload.
pub const MAX_EVENT_PAYLOAD: usize = 512;

/// User event payloads: UTF-8 text up to 512 bytes, without control characters other than
/// newline, carriage return and tab.
pub fn event_payload(payload: &[u8]) -> Result<(), NameError> {
    if payload.len() > MAX_EVENT_PAYLOAD {
        return Err(NameError(format!(
            "event payload of {} bytes is over {MAX_EVENT_PAYLOAD} bytes",
            payload.len()
        )));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| NameError("event payload must be UTF-8 text".into()))?;
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(NameError(
            "event payload must not contain control characters (other than newlines and tabs)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_and_markup_never_pass() {
        for bad in [
            "$(id>PWNED)",
            "`id`",
            "a;b",
            "a b",
            "a'b",
            "a\"b",
            "a|b",
            "a&b",
            "a<b",
            "a\nb",
            "a\\b",
            "a{b}",
            "*",
            "",
            "-oProxyCommand=id",
            "--help",
            ".hidden",
        ] {
            assert!(node_name(bad).is_err(), "node name {bad:?}");
            assert!(group(bad).is_err(), "group {bad:?}");
            assert!(check_name(bad).is_err(), "check name {bad:?}");
            assert!(event_type(bad).is_err(), "event type {bad:?}");
        }
        assert!(display_name("web\u{1b}[31m").is_err());
        assert!(display_name("  ").is_err());
    }

    #[test]
    fn real_names_pass() {
        for ok in ["web-1", "db_2.example.com", "a"] {
            node_name(ok).expect(ok);
        }
        for ok in [
            "linux",
            "zone::dc1",
            "ec2-region::eu-west-1",
            "kv",
            "a=b",
            "ops@x",
        ] {
            group(ok).expect(ok);
        }
        for ok in ["linux/cpu", "apps/redis.available", "my-pack/disk_usage"] {
            check_name(ok).expect(ok);
        }
        event_type("deploy-done").expect("event");
        display_name("Web server (paris) ✓").expect("display");
        version("0.1.0").expect("version");
        version("1.2.3-rc.1+b7").expect("version");
        event_payload(b"{\"sha\": \"abc\"}\nline two").expect("payload");
        assert!(event_payload(b"\x1b[2J").is_err());
        assert!(event_payload(&[0xff, 0xfe]).is_err());
        assert!(event_payload(&[b'a'; 513]).is_err());
        assert!(node_name(&"a".repeat(254)).is_err());
        assert!(group(&"a".repeat(64)).is_err());
    }

    #[test]
    fn errors_say_what_is_wrong_and_what_is_allowed() {
        let e = node_name("$(id)").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "node name `$(id)` contains `$`: use letters, digits, `-`, `_` and `.`"
        );
        let e = group("a\nb").expect_err("refused");
        assert!(e.to_string().contains("`\\n`"), "{e}");
    }
}
