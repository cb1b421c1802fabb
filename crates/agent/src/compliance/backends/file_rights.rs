//! `file-rights`: a file's owner, group and permissions.
//!
//! The file is opened once with `O_PATH` (and `O_NOFOLLOW` unless `follow_symlinks`), and every
//! look and change goes through that descriptor: a file swapped for a symlink between the check
//! and the fix cannot redirect a chown to another file.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{AtFlags, CWD, FileType, Gid, OFlags, Uid};
use serde_json::Value;

use super::{Params, check_absolute_path, final_state};
use crate::compliance::types::{Info, Mode, Outcome, RuleState};

/// A user or group as the rule names it: a name, or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Id {
    Name(String),
    Number(u32),
}

impl Id {
    fn parse(key: &str, text: &str) -> Result<Id, String> {
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            return match text.parse::<u32>() {
                // u32::MAX is -1: "leave unchanged" to chown.
                Ok(n) if n != u32::MAX => Ok(Id::Number(n)),
                _ => Err(format!("file-rights: `{key}` {text} is out of range")),
            };
        }
        // Names only reach getpwnam/getgrnam, never a command: accept what real systems have
        // (`Debian-exim`, `_apt`, `host$`), refuse what cannot be a name.
        let body = text.strip_suffix('$').unwrap_or(text);
        let ok = !body.is_empty()
            && text.len() <= 64
            && !body.starts_with('-')
            && body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(format!(
                "file-rights: `{key}` `{}` is not a valid name or number",
                text.escape_debug()
            ));
        }
        Ok(Id::Name(text.to_owned()))
    }

    fn shown(&self) -> String {
        match self {
            Id::Name(n) => n.clone(),
            Id::Number(n) => n.to_string(),
        }
    }
}

/// A checked `file-rights` rule.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    file: PathBuf,
    owner: Option<Id>,
    group: Option<Id>,
    /// The mode bits wanted (`0o644`), special bits included.
    permissions: Option<u32>,
    follow_symlinks: bool,
}

impl Spec {
    pub(super) fn parse(parameters: &Value) -> Result<Spec, String> {
        let p = Params::new(
            "file-rights",
            parameters,
            &["file", "owner", "group", "permissions", "follow_symlinks"],
        )?;
        let file = p.str_req("file")?;
        check_absolute_path("file-rights: file", file)?;
        let owner = p
            .text_opt("owner")?
            .map(|t| Id::parse("owner", &t))
            .transpose()?;
        let group = p
            .text_opt("group")?
            .map(|t| Id::parse("group", &t))
            .transpose()?;
        let permissions = p.get("permissions").map(parse_permissions).transpose()?;
        if owner.is_none() && group.is_none() && permissions.is_none() {
            return Err(
                "file-rights: nothing to check: give at least one of owner, group, permissions"
                    .to_owned(),
            );
        }
        Ok(Spec {
            file: PathBuf::from(file),
            owner,
            group,
            permissions,
            follow_symlinks: p.bool_opt("follow_symlinks")?.unwrap_or(false),
        })
    }
}

/// `644` (YAML reads it as the integer six hundred forty-four: its decimal digits are the octal
/// ones), `"644"`, `"0644"`, `"4755"` → the mode bits.
pub(crate) fn parse_permissions(value: &Value) -> Result<u32, String> {
    let digits = match value {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => String::new(),
    };
    let octal =
        !digits.is_empty() && digits.len() <= 5 && digits.chars().all(|c| ('0'..='7').contains(&c));
    match u32::from_str_radix(&digits, 8) {
        Ok(mode) if octal && mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "file-rights: `permissions` must be an octal mode like 644 or \"0644\", not {value}"
        )),
    }
}

/// Check (and in enforcing mode fix) one file. Blocking: lstat, chown and the user database.
pub(super) fn run(spec: &Spec, mode: Mode) -> Outcome {
    let path = spec.file.display().to_string();
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if !spec.follow_symlinks {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = match rustix::fs::openat(CWD, &spec.file, flags, rustix::fs::Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            return super::failed(format!("The file {path} does not exist"));
        }
        Err(e) => return super::failed(format!("Cannot open the file {path}: {e}")),
    };
    let stat = match rustix::fs::fstat(&fd) {
        Ok(s) => s,
        Err(e) => return super::failed(format!("Cannot stat the file {path}: {e}")),
    };
    if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
        return super::failed(format!(
            "The file {path} is a symbolic link: not following it (set follow_symlinks: true)"
        ));
    }

    let mut infos = Vec::new();
    let mut ok_parts = Vec::new();
    let mut errors = Vec::new();
    let mut unresolved = false;

    // What is wanted, as ids; a name that does not resolve cannot be checked.
    let want_uid = spec.owner.as_ref().and_then(|o| match resolve_user(o) {
        Ok(uid) => Some(uid),
        Err(e) => {
            errors.push(Info::error(e));
            unresolved = true;
            None
        }
    });
    let want_gid = spec.group.as_ref().and_then(|g| match resolve_group(g) {
        Ok(gid) => Some(gid),
        Err(e) => {
            errors.push(Info::error(e));
            unresolved = true;
            None
        }
    });

    let cur_mode = stat.st_mode & 0o7777;
    let mut chown_to: (Option<u32>, Option<u32>) = (None, None);
    let mut fixes = Vec::new();

    if let (Some(want), Some(given)) = (want_uid, &spec.owner) {
        let cur = user_shown(stat.st_uid);
        if stat.st_uid == want {
            ok_parts.push(format!("owner ({cur})"));
        } else {
            errors.push(Info::error(format!(
                "The file {path} owner ({cur}) is not what expected: {}",
                given.shown()
            )));
            fixes.push(format!("Fixing owner {cur} into {}", given.shown()));
            chown_to.0 = Some(want);
        }
    }
    if let (Some(want), Some(given)) = (want_gid, &spec.group) {
        let cur = group_shown(stat.st_gid);
        if stat.st_gid == want {
            ok_parts.push(format!("group ({cur})"));
        } else {
            errors.push(Info::error(format!(
                "The file {path} group ({cur}) is not what expected: {}",
                given.shown()
            )));
            fixes.push(format!("Fixing group {cur} into {}", given.shown()));
            chown_to.1 = Some(want);
        }
    }
    let mut chmod_to = None;
    if let Some(want) = spec.permissions {
        if cur_mode == want {
            ok_parts.push(format!("permissions ({cur_mode:o})"));
        } else {
            errors.push(Info::error(format!(
                "The file {path} permissions ({cur_mode:o}) are not what expected: {want:o}"
            )));
            fixes.push(format!("Fixing permissions {cur_mode:o} into {want:o}"));
            chmod_to = Some(want);
        }
    }

    if !ok_parts.is_empty() {
        let verb = if ok_parts.len() == 1 && !ok_parts[0].starts_with("permissions") {
            "is"
        } else {
            "are"
        };
        infos.push(Info::compliant(format!(
            "The file {path} {} {verb} OK",
            join_and(&ok_parts)
        )));
    }
    let differs = !fixes.is_empty();
    infos.extend(errors);
    if !differs || mode == Mode::Audit {
        return Outcome {
            state: final_state(differs || unresolved, false),
            infos,
        };
    }

    // Enforcing: owner and group first (a chown clears set-id bits, so the mode comes after).
    if chown_to != (None, None) {
        let owner = chown_to.0.map(Uid::from_raw);
        let group = chown_to.1.map(Gid::from_raw);
        if let Err(e) = rustix::fs::chownat(&fd, "", owner, group, AtFlags::EMPTY_PATH) {
            infos.push(Info::error(format!(
                "Cannot change the owner/group of {path}: {e}"
            )));
            return Outcome {
                state: RuleState::Error,
                infos,
            };
        }
        // The mode the file must keep: the wanted one, or the one it had (set-id bits the
        // chown cleared are put back).
        let keep = chmod_to.unwrap_or(cur_mode);
        match rustix::fs::fstat(&fd) {
            Ok(after) if after.st_mode & 0o7777 != keep => chmod_to = Some(keep),
            Ok(_) => {}
            Err(e) => {
                infos.push(Info::error(format!("Cannot stat the file {path}: {e}")));
                return Outcome {
                    state: RuleState::Error,
                    infos,
                };
            }
        }
    }
    if let Some(bits) = chmod_to
        && let Err(e) = chmod_fd(&fd, bits)
    {
        infos.push(Info::error(format!(
            "Cannot change the permissions of {path}: {e}"
        )));
        return Outcome {
            state: RuleState::Error,
            infos,
        };
    }
    infos.extend(fixes.into_iter().map(Info::fix));
    Outcome {
        state: final_state(unresolved, true),
        infos,
    }
}

/// chmod through an `O_PATH` descriptor: fchmod refuses those, but `/proc/self/fd/N` names the
/// very inode the descriptor holds (glibc's own fchmodat(AT_SYMLINK_NOFOLLOW) does the same).
/// The descriptor is never a symlink here: those were refused before.
fn chmod_fd(fd: &OwnedFd, bits: u32) -> rustix::io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::chmodat(
        CWD,
        proc_path.as_str(),
        rustix::fs::Mode::from_raw_mode(bits),
        AtFlags::empty(),
    )
}

fn resolve_user(id: &Id) -> Result<u32, String> {
    match id {
        Id::Number(n) => Ok(*n),
        Id::Name(name) => match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(user.uid.as_raw()),
            Ok(None) => Err(format!("The user {name} does not exist on this host")),
            Err(e) => Err(format!("Cannot look up the user {name}: {e}")),
        },
    }
}

fn resolve_group(id: &Id) -> Result<u32, String> {
    match id {
        Id::Number(n) => Ok(*n),
        Id::Name(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(group.gid.as_raw()),
            Ok(None) => Err(format!("The group {name} does not exist on this host")),
            Err(e) => Err(format!("Cannot look up the group {name}: {e}")),
        },
    }
}

/// A uid as people read it: its name, else the number.
fn user_shown(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// A gid as people read it: its name, else the number.
fn group_shown(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// `a`, `a and b`, `a, b and c`.
fn join_and(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::types::InfoKind;
    use serde_json::json;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn spec(parameters: Value) -> Spec {
        Spec::parse(&parameters).expect("valid")
    }

    fn texts(outcome: &Outcome) -> Vec<(InfoKind, &str)> {
        outcome
            .infos
            .iter()
            .map(|i| (i.kind, i.text.as_str()))
            .collect()
    }

    /// The uid and gid of `nobody` / `nogroup` on this host (Debian has both).
    fn nobody() -> (u32, u32) {
        let user = nix::unistd::User::from_name("nobody")
            .expect("lookup")
            .expect("this test needs the user nobody");
        let group = nix::unistd::Group::from_name("nogroup")
            .expect("lookup")
            .expect("this test needs the group nogroup");
        (user.uid.as_raw(), group.gid.as_raw())
    }

    fn require_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "file-rights tests change owners: run them as root"
        );
    }

    #[test]
    fn permissions_read_decimal_digits_as_octal() {
        assert_eq!(parse_permissions(&json!(644)), Ok(0o644));
        assert_eq!(parse_permissions(&json!("0644")), Ok(0o644));
        assert_eq!(parse_permissions(&json!("644")), Ok(0o644));
        assert_eq!(parse_permissions(&json!(4755)), Ok(0o4755));
        assert_eq!(parse_permissions(&json!(0)), Ok(0));
        for bad in [
            json!(648),
            json!("rwxr-xr-x"),
            json!(-1),
            json!(17777),
            json!(6.44),
        ] {
            assert!(parse_permissions(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            Spec::parse(&json!({"file": "/etc/passwd"})).map(|_| ()),
            Err(
                "file-rights: nothing to check: give at least one of owner, group, permissions"
                    .to_owned()
            )
        );
        assert!(Spec::parse(&json!({"file": "/x", "owner": "-rf"})).is_err());
        assert!(Spec::parse(&json!({"file": "/x", "owner": 4294967295u64})).is_err());
        assert_eq!(
            spec(json!({"file": "/x", "owner": 0, "group": "Debian-exim"})).owner,
            Some(Id::Number(0))
        );
    }

    #[test]
    fn audit_reports_differences_and_changes_nothing() {
        require_root();
        let (nobody_uid, nogroup_gid) = nobody();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::chown(&file, Some(nobody_uid), Some(nogroup_gid)).expect("chown");
        let path = file.display().to_string();

        let rule =
            spec(json!({"file": path, "owner": "root", "group": "root", "permissions": 644}));
        let outcome = run(&rule, Mode::Audit);
        assert_eq!(outcome.state, RuleState::Error);
        assert_eq!(
            texts(&outcome),
            vec![
                (
                    InfoKind::Error,
                    format!("The file {path} owner (nobody) is not what expected: root").as_str()
                ),
                (
                    InfoKind::Error,
                    format!("The file {path} group (nogroup) is not what expected: root").as_str()
                ),
                (
                    InfoKind::Error,
                    format!("The file {path} permissions (600) are not what expected: 644")
                        .as_str()
                ),
            ]
        );
        let meta = std::fs::metadata(&file).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (nobody_uid, nogroup_gid, 0o600)
        );
    }

    #[test]
    fn enforcing_fixes_owner_group_and_mode() {
        require_root();
        let (nobody_uid, nogroup_gid) = nobody();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::chown(&file, Some(0), Some(0)).expect("chown");
        let path = file.display().to_string();

        // root → nobody/nogroup, 644 → 600, by names.
        let to_nobody = spec(
            json!({"file": path, "owner": "nobody", "group": "nogroup", "permissions": "0600"}),
        );
        let outcome = run(&to_nobody, Mode::Enforcing);
        assert_eq!(outcome.state, RuleState::Fixed, "{outcome:?}");
        assert_eq!(
            texts(&outcome),
            vec![
                (
                    InfoKind::Error,
                    format!("The file {path} owner (root) is not what expected: nobody").as_str()
                ),
                (
                    InfoKind::Error,
                    format!("The file {path} group (root) is not what expected: nogroup").as_str()
                ),
                (
                    InfoKind::Error,
                    format!("The file {path} permissions (644) are not what expected: 600")
                        .as_str()
                ),
                (InfoKind::Fix, "Fixing owner root into nobody"),
                (InfoKind::Fix, "Fixing group root into nogroup"),
                (InfoKind::Fix, "Fixing permissions 644 into 600"),
            ]
        );
        let meta = std::fs::metadata(&file).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (nobody_uid, nogroup_gid, 0o600)
        );
        assert_eq!(run(&to_nobody, Mode::Audit).state, RuleState::Compliant);

        // And back to root by numbers, mode 644.
        let to_root = spec(json!({"file": path, "owner": 0, "group": "0", "permissions": 644}));
        assert_eq!(run(&to_root, Mode::Enforcing).state, RuleState::Fixed);
        let meta = std::fs::metadata(&file).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o644)
        );
        let outcome = run(&to_root, Mode::Audit);
        assert_eq!(outcome.state, RuleState::Compliant);
        assert_eq!(
            texts(&outcome),
            vec![(
                InfoKind::Compliant,
                format!("The file {path} owner (root), group (root) and permissions (644) are OK")
                    .as_str()
            )]
        );
    }

    #[test]
    fn a_chown_keeps_set_id_bits_the_kernel_clears() {
        require_root();
        let (nobody_uid, _) = nobody();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tool");
        std::fs::write(&file, "x").expect("write");
        std::os::unix::fs::chown(&file, Some(0), Some(0)).expect("chown");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
        let path = file.display().to_string();
        let outcome = run(
            &spec(json!({"file": path, "owner": "nobody"})),
            Mode::Enforcing,
        );
        assert_eq!(outcome.state, RuleState::Fixed);
        let meta = std::fs::metadata(&file).expect("stat");
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (nobody_uid, 0o4755));
    }

    #[test]
    fn a_symlink_is_not_followed_unless_asked() {
        require_root();
        let (nobody_uid, _) = nobody();
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        let link = dir.path().join("link");
        std::fs::write(&target, "x").expect("write");
        std::os::unix::fs::chown(&target, Some(0), Some(0)).expect("chown");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let link_path = link.display().to_string();

        let rule = spec(json!({"file": link_path, "owner": "nobody", "permissions": 600}));
        for mode in [Mode::Audit, Mode::Enforcing] {
            let outcome = run(&rule, mode);
            assert_eq!(outcome.state, RuleState::Error);
            assert_eq!(
                texts(&outcome),
                vec![(
                    InfoKind::Error,
                    format!(
                        "The file {link_path} is a symbolic link: not following it (set \
                         follow_symlinks: true)"
                    )
                    .as_str()
                )]
            );
        }
        let meta = std::fs::metadata(&target).expect("stat");
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
        let link_meta = std::fs::symlink_metadata(&link).expect("lstat");
        assert_eq!(link_meta.uid(), 0);

        // Asked to follow: the target changes.
        let follow = spec(
            json!({"file": link_path, "owner": "nobody", "permissions": 600, "follow_symlinks": true}),
        );
        assert_eq!(run(&follow, Mode::Enforcing).state, RuleState::Fixed);
        let meta = std::fs::metadata(&target).expect("stat");
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (nobody_uid, 0o600));
    }

    #[test]
    fn a_missing_file_or_unknown_user_is_an_error() {
        let outcome = run(
            &spec(json!({"file": "/nonexistent/opsbro/f", "owner": "root"})),
            Mode::Enforcing,
        );
        assert_eq!(
            outcome,
            Outcome {
                state: RuleState::Error,
                infos: vec![Info::error("The file /nonexistent/opsbro/f does not exist")],
            }
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        let outcome = run(
            &spec(json!({"file": file.display().to_string(), "owner": "opsbro-no-such-user"})),
            Mode::Enforcing,
        );
        assert_eq!(outcome.state, RuleState::Error);
        assert_eq!(
            texts(&outcome),
            vec![(
                InfoKind::Error,
                "The user opsbro-no-such-user does not exist on this host"
            )]
        );
    }
}
