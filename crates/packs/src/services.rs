//! `service:` objects: what a node runs and how to tell whether it is healthy (Consul's service
//! definitions, the original's `service:` with its embedded `check`).
//!
//! ```yaml
//! service:
//!   name: web                 # default: the file name
//!   port: 80
//!   tags: [primary, v2]
//!   address: 10.0.0.5         # default: the node's address
//!   if_group: nginx           # default: every node
//!   meta: {version: "1.25"}
//!   check:                    # an inline check (any check kind) ...
//!     http: http://127.0.0.1/health
//!     interval: 10s
//!   # ... or the names of checks: `check: web-port` / `checks: [linux/cpu, web-port]`
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use opsbro_types::names;
use serde_yaml::Value as Yaml;

use crate::ExprCheck;
use crate::monitoring::{CheckSpec, Problem, parse_check, text};

/// Most services one node declares (they travel in its gossip record).
pub const MAX_SERVICES: usize = 64;
/// Most tags of a service.
pub const MAX_TAGS: usize = 32;
/// Most `meta` entries of a service.
pub const MAX_META: usize = 32;

/// A `service:` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service's name: a DNS label (`web` → `web.service.opsbro`).
    pub name: String,
    /// The object's name, `<pack>/<file stem>` (merging across levels goes by it).
    pub object: String,
    /// Pack name.
    pub pack: String,
    /// File it was read from.
    pub file: String,
    /// Port; 0 when none is declared (no SRV record then).
    pub port: u16,
    /// Address when it is not the node's.
    pub address: Option<IpAddr>,
    /// Tags, sorted, without repeats.
    pub tags: Vec<String>,
    /// `meta`, sorted by key.
    pub meta: Vec<(String, String)>,
    /// Group a node must have to run the service (`*` = every node).
    pub if_group: String,
    /// Names of the checks whose states make the service's health (the inline check's too).
    pub checks: Vec<String>,
}

const SERVICE_KEYS: &[&str] = &[
    "name",
    "port",
    "tags",
    "address",
    "if_group",
    "check",
    "checks",
    "meta",
    "display_name",
    "notes",
    "description",
];

/// The name of a service's inline check: `<pack>/service-<name>`.
pub fn inline_check_name(pack: &str, service: &str) -> String {
    format!("{pack}/service-{service}")
}

/// A check named in a service: a full name (`linux/cpu`), or a file stem of the same pack.
fn check_ref(pack: &str, name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{pack}/{name}")
    }
}

fn labels(
    v: &Yaml,
    path: &str,
    rule: fn(&str) -> Result<(), names::NameError>,
) -> Result<Vec<String>, Problem> {
    let list: Vec<Yaml> = match v {
        Yaml::Null => Vec::new(),
        Yaml::Sequence(s) => s.clone(),
        other => vec![other.clone()],
    };
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let t = text(item, &format!("{path}[{i}]"))?;
        rule(&t).map_err(|e| (path.to_owned(), e.0))?;
        out.push(t);
    }
    Ok(out)
}

/// A parsed service: the service, its inline check (with the problems of its expressions)
/// when it has one, and warnings.
pub(crate) type Parsed = (ServiceSpec, Option<(CheckSpec, Vec<Problem>)>, Vec<Problem>);

/// Parse a `service:` object; the inline check, when there is one, comes back beside it for
/// the pack to load as any check.
pub(crate) fn parse_service(
    body: &Yaml,
    pack: &str,
    stem: &str,
    file: &str,
    check: ExprCheck<'_>,
) -> Result<Parsed, Problem> {
    let map = body.as_mapping().ok_or_else(|| {
        (
            "service".to_owned(),
            "`service` must be a mapping (name, port, tags, check...)".to_owned(),
        )
    })?;
    let mut warnings = Vec::new();
    let name = match body.get("name") {
        Some(v) => text(v, "service.name")?,
        None => stem.to_owned(),
    };
    names::service_name(&name).map_err(|e| {
        let key = if body.get("name").is_some() {
            "service.name"
        } else {
            "service"
        };
        (
            key.to_owned(),
            format!("{} (the service name is a DNS label)", e.0),
        )
    })?;
    let mut spec = ServiceSpec {
        name,
        object: format!("{pack}/{stem}"),
        pack: pack.to_owned(),
        file: file.to_owned(),
        port: 0,
        address: None,
        tags: Vec::new(),
        meta: Vec::new(),
        if_group: "*".into(),
        checks: Vec::new(),
    };
    let mut inline = None;
    let mut inline_own_group = false;
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        let path = format!("service.{key}");
        match key {
            "name" | "display_name" | "notes" | "description" => {}
            "port" => {
                spec.port = v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        (
                            path.clone(),
                            format!("{path} must be a port from 1 to 65535"),
                        )
                    })?;
            }
            "address" => {
                let t = text(v, &path)?;
                spec.address = Some(t.trim().parse().map_err(|_| {
                    (
                        path.clone(),
                        format!("{path} `{t}` is not an IP address (DNS answers carry addresses)"),
                    )
                })?);
            }
            "tags" => {
                spec.tags = labels(v, &path, names::service_tag)?;
                spec.tags.sort();
                spec.tags.dedup();
                if spec.tags.len() > MAX_TAGS {
                    return Err((path, format!("a service has at most {MAX_TAGS} tags")));
                }
            }
            "if_group" => {
                let g = text(v, &path)?;
                if g != "*" {
                    opsbro_config::check_group(&g).map_err(|e| (path.clone(), e))?;
                }
                spec.if_group = g;
            }
            "meta" => {
                let m = v
                    .as_mapping()
                    .ok_or_else(|| (path.clone(), format!("{path} must map keys to text")))?;
                let mut meta = BTreeMap::new();
                for (mk, mv) in m {
                    let mk = text(mk, &path)?;
                    names::meta_key(&mk).map_err(|e| (path.clone(), e.0))?;
                    let mv = text(mv, &format!("{path}.{mk}"))?;
                    names::text(&format!("{path}.{mk}"), &mv, names::MAX_META_VALUE)
                        .map_err(|e| (path.clone(), e.0))?;
                    meta.insert(mk, mv);
                }
                if meta.len() > MAX_META {
                    return Err((
                        path.clone(),
                        format!("{path} has at most {MAX_META} entries"),
                    ));
                }
                spec.meta = meta.into_iter().collect();
            }
            "check" | "checks" if v.is_mapping() => {
                if inline.is_some() {
                    return Err((path, "a service has one inline check".into()));
                }
                let check_name = inline_check_name(pack, &spec.name);
                let stem = check_name
                    .trim_start_matches(&format!("{pack}/"))
                    .to_owned();
                let (mut c, problems) =
                    parse_check(v, pack, &stem, file, check).map_err(|(key, message)| {
                        let key = key.replacen("check", &path, 1);
                        (key, format!("service check: {message}"))
                    })?;
                if v.get("display_name").is_none() {
                    c.display_name = format!("service {}", spec.name);
                }
                spec.checks.push(c.name.clone());
                inline_own_group = v.get("if_group").is_some();
                inline = Some((c, problems));
            }
            "check" | "checks" => {
                let list = labels(v, &path, names::check_name)?;
                spec.checks.extend(list.iter().map(|n| check_ref(pack, n)));
            }
            other => match opsbro_config::closest(other, SERVICE_KEYS) {
                Some(k) => {
                    return Err((path, format!("unknown key `{other}` (did you mean `{k}`?)")));
                }
                None => warnings.push((
                    path,
                    format!(
                        "unknown key `{other}` ignored (known: {})",
                        SERVICE_KEYS.join(", ")
                    ),
                )),
            },
        }
    }
    // The inline check follows the service's `if_group` (read in any key order) unless it
    // names its own.
    if let Some((c, _)) = inline.as_mut()
        && !inline_own_group
    {
        c.if_group = spec.if_group.clone();
    }
    spec.checks.sort();
    spec.checks.dedup();
    Ok((spec, inline, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitoring::CheckKind;

    fn parse(yaml: &str) -> Result<Parsed, Problem> {
        let body: Yaml = serde_yaml::from_str(yaml).expect("yaml");
        parse_service(&body, "local", "web", "web.yml", &|_| Ok(()))
    }

    #[test]
    fn a_full_service_with_an_inline_check() {
        let (s, inline, warnings) = parse(
            "name: web\nport: 8080\ntags: [v2, primary, v2]\naddress: 10.0.0.5\nif_group: nginx\nmeta: {version: 1.25, team: web}\ncheck:\n  http: http://127.0.0.1:8080/health\n  interval: 5s\n",
        )
        .expect("service");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(s.name, "web");
        assert_eq!(s.object, "local/web");
        assert_eq!(s.port, 8080);
        assert_eq!(s.tags, ["primary", "v2"]);
        assert_eq!(s.address, Some("10.0.0.5".parse().expect("ip")));
        assert_eq!(s.if_group, "nginx");
        assert_eq!(
            s.meta,
            [
                ("team".to_owned(), "web".to_owned()),
                ("version".to_owned(), "1.25".to_owned())
            ]
        );
        assert_eq!(s.checks, ["local/service-web"]);
        let (c, problems) = inline.expect("inline check");
        assert!(problems.is_empty());
        assert_eq!(c.name, "local/service-web");
        assert_eq!(c.if_group, "nginx");
        assert!(matches!(c.kind, CheckKind::Http(_)));
    }

    #[test]
    fn named_checks_and_defaults() {
        let (s, inline, _) = parse("checks: [web-port, linux/cpu]\n").expect("service");
        assert_eq!(s.name, "web", "the file name");
        assert_eq!(s.port, 0);
        assert_eq!(s.if_group, "*");
        assert!(inline.is_none());
        assert_eq!(s.checks, ["linux/cpu", "local/web-port"]);
        let (s, _, _) = parse("name: api\ncheck: api-health\n").expect("one name");
        assert_eq!(s.checks, ["local/api-health"]);
    }

    #[test]
    fn bad_services_say_why() {
        for (yaml, why) in [
            ("name: 'web site'\n", "service name"),
            ("name: web.site\n", "service name"),
            ("port: 0\n", "port from 1 to 65535"),
            ("port: 70000\n", "port from 1 to 65535"),
            ("address: web.example\n", "not an IP address"),
            ("tags: ['a b']\n", "service tag"),
            ("meta: {'bad key': x}\n", "meta key"),
            ("meta: [a]\n", "must map keys"),
            ("prot: 80\n", "did you mean `port`"),
            ("check: {http: ftp://x}\n", "service check"),
            ("check: 'bad name!'\n", "check name"),
        ] {
            let e = parse(yaml).expect_err(yaml);
            assert!(e.1.contains(why), "{yaml}: {e:?}");
        }
        let (_, _, warnings) = parse("port: 80\nweight: 3\n").expect("unknown key warns");
        assert!(
            warnings[0].1.contains("unknown key `weight`"),
            "{warnings:?}"
        );
    }
}
