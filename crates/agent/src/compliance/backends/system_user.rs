//! `system-user`: a local user with the given uid, group, display name, home and shell, read
//! with `getent` and made with `useradd` / `usermod` (argv built by pure functions).

use serde_json::Value;

use super::{
    Params, RuleRun, check_absolute_path, check_user_name, command_failure, failed, run_command,
};
use crate::compliance::types::{Info, Mode, Outcome, RuleState};

/// The user's group as the rule names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupRef {
    Id(u32),
    Name(String),
}

impl GroupRef {
    fn shown(&self) -> String {
        match self {
            GroupRef::Id(n) => n.to_string(),
            GroupRef::Name(n) => n.clone(),
        }
    }
}

/// A checked `system-user` rule.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    name: String,
    uid: Option<u32>,
    gid: Option<GroupRef>,
    display_name: Option<String>,
    home_dir: Option<String>,
    shell: Option<String>,
}

/// A number for an id: not -1 (u32::MAX), which the tools read as "none".
fn parse_id(key: &str, text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n != u32::MAX && text.chars().all(|c| c.is_ascii_digit()) => Ok(n),
        _ => Err(format!(
            "system-user: `{key}` must be a number below 4294967295, not `{}`",
            text.escape_debug()
        )),
    }
}

/// A passwd field: one line, no `:` (the field separator).
fn check_passwd_field(key: &str, text: &str) -> Result<(), String> {
    if text.contains(':') || text.chars().any(char::is_control) {
        return Err(format!(
            "system-user: `{key}` `{}` cannot hold `:` or control characters",
            text.escape_debug()
        ));
    }
    Ok(())
}

impl Spec {
    pub(super) fn parse(parameters: &Value) -> Result<Spec, String> {
        let p = Params::new(
            "system-user",
            parameters,
            &["name", "uid", "gid", "display_name", "home_dir", "shell"],
        )?;
        let name = p.str_req("name")?;
        check_user_name("user", name).map_err(|e| format!("system-user: {e}"))?;
        let uid = p
            .text_opt("uid")?
            .map(|t| parse_id("uid", &t))
            .transpose()?;
        let gid = match p.text_opt("gid")? {
            None => None,
            Some(t) if t.chars().all(|c| c.is_ascii_digit()) => {
                Some(GroupRef::Id(parse_id("gid", &t)?))
            }
            Some(t) => {
                check_user_name("group", &t).map_err(|e| format!("system-user: {e}"))?;
                Some(GroupRef::Name(t))
            }
        };
        let display_name = p.str_opt("display_name")?.map(str::to_owned);
        if let Some(d) = &display_name {
            check_passwd_field("display_name", d)?;
        }
        let mut paths = [("home_dir", None), ("shell", None)];
        for (key, slot) in &mut paths {
            if let Some(path) = p.str_opt(key)? {
                check_absolute_path(&format!("system-user: {key}"), path)?;
                check_passwd_field(key, path)?;
                *slot = Some(path.to_owned());
            }
        }
        let [(_, home_dir), (_, shell)] = paths;
        Ok(Spec {
            name: name.to_owned(),
            uid,
            gid,
            display_name,
            home_dir,
            shell,
        })
    }
}

/// A user's passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) gecos: String,
    pub(crate) home: String,
    pub(crate) shell: String,
}

/// `name:x:uid:gid:gecos:home:shell`.
pub(crate) fn parse_passwd_line(line: &str) -> Option<PasswdEntry> {
    let fields: Vec<&str> = line.trim_end_matches(['\n', '\r']).split(':').collect();
    let [_, _, uid, gid, gecos, home, shell] = fields.as_slice() else {
        return None;
    };
    Some(PasswdEntry {
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        gecos: (*gecos).to_owned(),
        home: (*home).to_owned(),
        shell: (*shell).to_owned(),
    })
}

/// The fields to give useradd or usermod; None: not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UserFields {
    pub(crate) uid: Option<u32>,
    /// A gid or a group name.
    pub(crate) gid: Option<String>,
    pub(crate) display_name: Option<String>,
    pub(crate) home_dir: Option<String>,
    pub(crate) shell: Option<String>,
}

fn field_args(fields: &UserFields) -> Vec<String> {
    let mut argv = Vec::new();
    let mut add = |flag: &str, value: &Option<String>| {
        if let Some(v) = value {
            argv.push(flag.to_owned());
            argv.push(v.clone());
        }
    };
    add("-u", &fields.uid.map(|u| u.to_string()));
    add("-g", &fields.gid);
    add("-c", &fields.display_name);
    add("-d", &fields.home_dir);
    add("-s", &fields.shell);
    argv
}

/// `useradd [-u UID] [-g GID] [-c DISPLAY] [-d HOME -m] [-s SHELL] -- NAME` (the home is made
/// only when one is given).
pub(crate) fn useradd_argv(name: &str, fields: &UserFields) -> Vec<String> {
    let mut argv = vec!["useradd".to_owned()];
    argv.extend(field_args(fields));
    if fields.home_dir.is_some() {
        argv.push("-m".to_owned());
    }
    argv.push("--".to_owned());
    argv.push(name.to_owned());
    argv
}

/// `usermod` with only the fields that differ, `-- NAME`.
pub(crate) fn usermod_argv(name: &str, fields: &UserFields) -> Vec<String> {
    let mut argv = vec!["usermod".to_owned()];
    argv.extend(field_args(fields));
    argv.push("--".to_owned());
    argv.push(name.to_owned());
    argv
}

/// The user's passwd entry, None when there is no such user.
async fn lookup_user(
    name: &str,
    timeout: std::time::Duration,
) -> Result<Option<PasswdEntry>, String> {
    let argv = ["getent", "passwd", "--", name];
    let out = run_command(&argv, &[], timeout).await?;
    match out.code {
        Some(0) => out
            .stdout
            .lines()
            .next()
            .and_then(parse_passwd_line)
            .map(Some)
            .ok_or_else(|| format!("cannot read the passwd entry of {name}: `{}`", out.stdout)),
        // getent: "One or more supplied key could not be found".
        Some(2) => Ok(None),
        _ => Err(command_failure(&argv, &out)),
    }
}

/// A group's gid, None when there is no such group.
async fn lookup_group(name: &str, timeout: std::time::Duration) -> Result<Option<u32>, String> {
    let argv = ["getent", "group", "--", name];
    let out = run_command(&argv, &[], timeout).await?;
    match out.code {
        Some(0) => out
            .stdout
            .lines()
            .next()
            .and_then(|line| line.split(':').nth(2))
            .and_then(|gid| gid.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("cannot read the group entry of {name}: `{}`", out.stdout)),
        Some(2) => Ok(None),
        _ => Err(command_failure(&argv, &out)),
    }
}

/// One field that is not what the rule says.
struct Difference {
    field: &'static str,
    current: String,
    wanted: String,
}

/// What differs between the entry and the rule, and the usermod fields that fix it.
fn differences(
    spec: &Spec,
    entry: &PasswdEntry,
    gid: Option<u32>,
) -> (Vec<Difference>, UserFields) {
    let mut found = Vec::new();
    let mut fix = UserFields::default();
    if let Some(uid) = spec.uid
        && entry.uid != uid
    {
        found.push(Difference {
            field: "uid",
            current: entry.uid.to_string(),
            wanted: uid.to_string(),
        });
        fix.uid = Some(uid);
    }
    if let (Some(gid), Some(given)) = (gid, &spec.gid)
        && entry.gid != gid
    {
        found.push(Difference {
            field: "gid",
            current: entry.gid.to_string(),
            wanted: given.shown(),
        });
        fix.gid = Some(given.shown());
    }
    let mut text = |field, current: &str, wanted: &Option<String>, slot: &mut Option<String>| {
        if let Some(w) = wanted
            && current != w
        {
            found.push(Difference {
                field,
                current: current.to_owned(),
                wanted: w.clone(),
            });
            *slot = Some(w.clone());
        }
    };
    text(
        "display name",
        &entry.gecos,
        &spec.display_name,
        &mut fix.display_name,
    );
    text(
        "home directory",
        &entry.home,
        &spec.home_dir,
        &mut fix.home_dir,
    );
    text("shell", &entry.shell, &spec.shell, &mut fix.shell);
    (found, fix)
}

pub(super) async fn run(spec: &Spec, run: &RuleRun<'_>) -> Outcome {
    let name = &spec.name;
    let gid = match &spec.gid {
        None => None,
        Some(GroupRef::Id(n)) => Some(*n),
        Some(GroupRef::Name(group)) => match lookup_group(group, run.timeout).await {
            Ok(Some(gid)) => Some(gid),
            Ok(None) => {
                return failed(format!(
                    "The group {group} wanted for the user {name} does not exist"
                ));
            }
            Err(e) => return failed(format!("Cannot look up the group {group}: {e}")),
        },
    };
    let entry = match lookup_user(name, run.timeout).await {
        Ok(entry) => entry,
        Err(e) => return failed(format!("Cannot look up the user {name}: {e}")),
    };
    let mut infos = Vec::new();
    match entry {
        None => {
            infos.push(Info::error(format!(
                "The user {name} is not defined on the system"
            )));
            if run.mode == Mode::Audit {
                return Outcome {
                    state: RuleState::Error,
                    infos,
                };
            }
            let fields = UserFields {
                uid: spec.uid,
                gid: spec.gid.as_ref().map(GroupRef::shown),
                display_name: spec.display_name.clone(),
                home_dir: spec.home_dir.clone(),
                shell: spec.shell.clone(),
            };
            if let Err(e) = change(&useradd_argv(name, &fields), run.timeout).await {
                infos.push(Info::error(format!("Cannot create the user {name}: {e}")));
                return Outcome {
                    state: RuleState::Error,
                    infos,
                };
            }
            infos.push(Info::fix(format!("The user {name} was created")));
        }
        Some(entry) => {
            let (found, fix) = differences(spec, &entry, gid);
            if found.is_empty() {
                infos.push(Info::compliant(format!(
                    "The user {name} exists with the good properties"
                )));
                return Outcome {
                    state: RuleState::Compliant,
                    infos,
                };
            }
            for d in &found {
                infos.push(Info::error(format!(
                    "The user {name} {} ({}) is not what expected: {}",
                    d.field, d.current, d.wanted
                )));
            }
            if run.mode == Mode::Audit {
                return Outcome {
                    state: RuleState::Error,
                    infos,
                };
            }
            if let Err(e) = change(&usermod_argv(name, &fix), run.timeout).await {
                infos.push(Info::error(format!("Cannot modify the user {name}: {e}")));
                return Outcome {
                    state: RuleState::Error,
                    infos,
                };
            }
            for d in &found {
                infos.push(Info::fix(format!(
                    "Fixing the user {name} {} {} into {}",
                    d.field, d.current, d.wanted
                )));
            }
        }
    }
    // Look again: the tools said yes, the passwd database must agree.
    match lookup_user(name, run.timeout).await {
        Ok(Some(entry)) => {
            let (left, _) = differences(spec, &entry, gid);
            for d in &left {
                infos.push(Info::error(format!(
                    "The user {name} {} is still {} after the fix, not {}",
                    d.field, d.current, d.wanted
                )));
            }
            Outcome {
                state: if left.is_empty() {
                    RuleState::Fixed
                } else {
                    RuleState::Error
                },
                infos,
            }
        }
        Ok(None) => {
            infos.push(Info::error(format!(
                "The user {name} is still not defined after the fix"
            )));
            Outcome {
                state: RuleState::Error,
                infos,
            }
        }
        Err(e) => {
            infos.push(Info::error(format!("Cannot look up the user {name}: {e}")));
            Outcome {
                state: RuleState::Error,
                infos,
            }
        }
    }
}

/// Run useradd/usermod: Ok when it exited 0.
async fn change(argv: &[String], timeout: std::time::Duration) -> Result<(), String> {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = run_command(&argv, &[("LC_ALL", "C")], timeout).await?;
    if out.success() {
        Ok(())
    } else {
        Err(command_failure(&argv, &out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::types::InfoKind;
    use serde_json::json;
    use std::time::Duration;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn useradd_and_usermod_command_lines() {
        let all = UserFields {
            uid: Some(14),
            gid: Some("50".to_owned()),
            display_name: Some("FTP User".to_owned()),
            home_dir: Some("/var/ftp".to_owned()),
            shell: Some("/sbin/nologin".to_owned()),
        };
        assert_eq!(
            useradd_argv("ftp", &all),
            strings(&[
                "useradd",
                "-u",
                "14",
                "-g",
                "50",
                "-c",
                "FTP User",
                "-d",
                "/var/ftp",
                "-s",
                "/sbin/nologin",
                "-m",
                "--",
                "ftp"
            ])
        );
        assert_eq!(
            useradd_argv("ftp", &UserFields::default()),
            strings(&["useradd", "--", "ftp"])
        );
        let shell_only = UserFields {
            shell: Some("/bin/sh".to_owned()),
            ..UserFields::default()
        };
        assert_eq!(
            usermod_argv("ftp", &shell_only),
            strings(&["usermod", "-s", "/bin/sh", "--", "ftp"])
        );
        assert_eq!(
            usermod_argv("ftp", &all),
            strings(&[
                "usermod",
                "-u",
                "14",
                "-g",
                "50",
                "-c",
                "FTP User",
                "-d",
                "/var/ftp",
                "-s",
                "/sbin/nologin",
                "--",
                "ftp"
            ])
        );
    }

    #[test]
    fn passwd_lines_and_parameters_are_read() {
        assert_eq!(
            parse_passwd_line("ftp:x:14:50:FTP User:/var/ftp:/sbin/nologin\n"),
            Some(PasswdEntry {
                uid: 14,
                gid: 50,
                gecos: "FTP User".to_owned(),
                home: "/var/ftp".to_owned(),
                shell: "/sbin/nologin".to_owned(),
            })
        );
        assert_eq!(parse_passwd_line("ftp:x:14:50"), None);
        assert_eq!(parse_passwd_line("ftp:x:a:50:x:/:/bin/sh"), None);

        let spec = Spec::parse(&json!({"name": "ftp", "uid": 14, "gid": "staff"})).expect("ok");
        assert_eq!(
            (spec.uid, spec.gid),
            (Some(14), Some(GroupRef::Name("staff".into())))
        );
        let spec = Spec::parse(&json!({"name": "ftp", "gid": 50})).expect("ok");
        assert_eq!(spec.gid, Some(GroupRef::Id(50)));
        for (bad, why) in [
            (
                json!({"name": "ftp", "uid": "abc"}),
                "`uid` must be a number",
            ),
            (
                json!({"name": "ftp", "uid": -1}),
                "`uid` must be a name or a whole number",
            ),
            (
                json!({"name": "ftp", "gid": "Staff"}),
                "is not a valid group name",
            ),
            (
                json!({"name": "ftp", "display_name": "a:b"}),
                "cannot hold `:`",
            ),
            (
                json!({"name": "ftp", "shell": "/bin/sh\n"}),
                "has a NUL or a line break",
            ),
            (
                json!({"name": "ftp", "home_dir": "/srv:x"}),
                "cannot hold `:`",
            ),
            (json!({"name": "-o"}), "is not a valid user name"),
        ] {
            let e = Spec::parse(&bad).map(|_| ()).expect_err(why);
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }

    /// Deletes the test user (and its home) when the test ends, passed or failed.
    struct DeleteUser(String);

    impl Drop for DeleteUser {
        fn drop(&mut self) {
            let _ = std::process::Command::new("userdel")
                .args(["-r", "--", &self.0])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    fn getent(name: &str) -> Option<PasswdEntry> {
        let out = std::process::Command::new("getent")
            .args(["passwd", "--", name])
            .output()
            .expect("getent");
        parse_passwd_line(String::from_utf8_lossy(&out.stdout).lines().next()?)
    }

    #[tokio::test]
    async fn useradd_creates_usermod_fixes_and_audit_agrees() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test creates a user: run it as root"
        );
        assert!(
            super::super::packages::in_path("useradd"),
            "this test needs useradd/usermod/userdel (package passwd)"
        );
        let name = format!("opsbro-test-{}", std::process::id());
        let _cleanup = DeleteUser(name.clone());
        let homes = tempfile::tempdir().expect("tempdir");
        let home = homes.path().join(&name).display().to_string();
        assert_eq!(getent(&name), None);

        let texts = |o: &Outcome| -> Vec<(InfoKind, String)> {
            o.infos.iter().map(|i| (i.kind, i.text.clone())).collect()
        };
        let run_with = |parameters: Value, mode| async move {
            super::super::run(RuleRun {
                kind: "system-user",
                parameters: &parameters,
                mode,
                root: std::path::Path::new("/"),
                timeout: Duration::from_secs(60),
                distro: Some("debian"),
            })
            .await
        };
        let wanted = json!({
            "name": name,
            "display_name": "Opsbro Test",
            "home_dir": home,
            "shell": "/bin/sh",
        });

        let audit = run_with(wanted.clone(), Mode::Audit).await;
        assert_eq!(audit.state, RuleState::Error);
        assert_eq!(
            texts(&audit),
            vec![(
                InfoKind::Error,
                format!("The user {name} is not defined on the system")
            )]
        );
        assert_eq!(getent(&name), None, "audit must not create");

        let fix = run_with(wanted.clone(), Mode::Enforcing).await;
        assert_eq!(fix.state, RuleState::Fixed, "{fix:?}");
        assert_eq!(
            texts(&fix),
            vec![
                (
                    InfoKind::Error,
                    format!("The user {name} is not defined on the system")
                ),
                (InfoKind::Fix, format!("The user {name} was created")),
            ]
        );
        let entry = getent(&name).expect("created");
        assert_eq!(
            (
                entry.gecos.as_str(),
                entry.home.as_str(),
                entry.shell.as_str()
            ),
            ("Opsbro Test", home.as_str(), "/bin/sh")
        );
        assert!(std::path::Path::new(&home).is_dir(), "-m made the home");

        let audit = run_with(wanted.clone(), Mode::Audit).await;
        assert_eq!(audit.state, RuleState::Compliant);
        assert_eq!(
            texts(&audit),
            vec![(
                InfoKind::Compliant,
                format!("The user {name} exists with the good properties")
            )]
        );

        // Another shell, and the uid it already has: only the shell changes.
        let bash = json!({"name": name, "shell": "/bin/bash", "uid": entry.uid});
        let audit = run_with(bash.clone(), Mode::Audit).await;
        assert_eq!(
            texts(&audit),
            vec![(
                InfoKind::Error,
                format!("The user {name} shell (/bin/sh) is not what expected: /bin/bash")
            )]
        );
        let fix = run_with(bash.clone(), Mode::Enforcing).await;
        assert_eq!(fix.state, RuleState::Fixed, "{fix:?}");
        assert_eq!(
            texts(&fix)[1],
            (
                InfoKind::Fix,
                format!("Fixing the user {name} shell /bin/sh into /bin/bash")
            )
        );
        let after = getent(&name).expect("still there");
        assert_eq!((after.shell.as_str(), after.uid), ("/bin/bash", entry.uid));
        assert_eq!(
            run_with(bash, Mode::Audit).await.state,
            RuleState::Compliant
        );

        // A group that does not exist is an error, not a useradd failure.
        let outcome = run_with(
            json!({"name": name, "gid": "opsbro-no-group"}),
            Mode::Enforcing,
        )
        .await;
        assert_eq!(
            texts(&outcome),
            vec![(
                InfoKind::Error,
                format!("The group opsbro-no-group wanted for the user {name} does not exist")
            )]
        );
    }
}
