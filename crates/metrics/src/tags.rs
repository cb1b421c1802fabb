//! Tagged series as carbon 1.1 and graphite-web 1.1 have them: `name;tag=value;tag2=value2`,
//! stored under one canonical name (tags sorted by name), found with `seriesByTag` expressions
//! (`tag=value`, `tag!=value`, `tag=~regex`, `tag!=~regex`) and listed for Grafana's tag editor.

use std::collections::{BTreeMap, BTreeSet};

/// The canonical name of a series path: unchanged without `;`, otherwise `name;a=1;b=2` with the
/// tags sorted by name (the last of a repeated tag wins, as in carbon).
pub fn normalize(path: &str) -> Result<String, &'static str> {
    if !path.contains(';') {
        return Ok(path.to_owned());
    }
    let mut parts = path.split(';');
    let metric = parts.next().unwrap_or_default();
    if metric.is_empty() {
        return Err("tagged series without a name before `;`");
    }
    let mut tags = BTreeMap::new();
    for part in parts {
        let (tag, value) = part.split_once('=').ok_or("a tag must be `tag=value`")?;
        if tag.is_empty() || tag.contains(['!', '^', '=']) {
            return Err("tag names cannot be empty or contain `!`, `^` or `=`");
        }
        if value.is_empty() || value.starts_with('~') {
            return Err("tag values cannot be empty or start with `~`");
        }
        if tag == "name" {
            return Err("`name` is not a tag: write it before the first `;`");
        }
        tags.insert(tag, value);
    }
    let mut out = metric.to_owned();
    for (tag, value) in tags {
        out.push(';');
        out.push_str(tag);
        out.push('=');
        out.push_str(value);
    }
    Ok(out)
}

/// The tags of a series name: `name` is the part before the first `;` (the whole name for an
/// untagged series).
pub fn parse(name: &str) -> BTreeMap<String, String> {
    let mut parts = name.split(';');
    let mut tags = BTreeMap::new();
    tags.insert(
        "name".to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    for part in parts {
        if let Some((t, v)) = part.split_once('=') {
            tags.insert(t.to_owned(), v.to_owned());
        }
    }
    tags
}

/// Whether a series name carries tags.
pub fn is_tagged(name: &str) -> bool {
    name.contains(';')
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Match(regex_lite::Regex),
    NotMatch(regex_lite::Regex),
}

/// One `seriesByTag` expression.
#[derive(Debug, Clone)]
pub struct TagExpr {
    tag: String,
    op: Op,
}

impl TagExpr {
    /// Parse `tag=value`, `tag!=value`, `tag=~regex` or `tag!=~regex` (a regex matches from the
    /// start of the value, as in graphite-web).
    pub fn parse(spec: &str) -> Result<TagExpr, String> {
        let bad = || format!("invalid tagspec {spec}");
        let i = spec.find(['!', '=']).ok_or_else(bad)?;
        let (tag, rest) = spec.split_at(i);
        if tag.is_empty() || tag.contains(';') {
            return Err(bad());
        }
        let regex = |re: &str| {
            regex_lite::Regex::new(&format!("^(?:{re})"))
                .map_err(|e| format!("invalid regex in tagspec {spec}: {e}"))
        };
        let op = if let Some(v) = rest.strip_prefix("!=~") {
            Op::NotMatch(regex(v)?)
        } else if let Some(v) = rest.strip_prefix("!=") {
            Op::Ne(v.to_owned())
        } else if let Some(v) = rest.strip_prefix("=~") {
            Op::Match(regex(v)?)
        } else if let Some(v) = rest.strip_prefix('=') {
            Op::Eq(v.to_owned())
        } else {
            return Err(bad());
        };
        if matches!(&op, Op::Eq(v) | Op::Ne(v) if v.contains(';')) {
            return Err(bad());
        }
        Ok(TagExpr {
            tag: tag.to_owned(),
            op,
        })
    }

    /// The tag it tests.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether a series with `tags` passes (a missing tag reads as the empty value).
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        let value = tags.get(&self.tag).map_or("", String::as_str);
        match &self.op {
            Op::Eq(v) => value == v,
            Op::Ne(v) => value != v,
            Op::Match(re) => re.is_match(value),
            Op::NotMatch(re) => !re.is_match(value),
        }
    }

    /// Whether a series without the tag would pass (graphite-web wants at least one expression
    /// that does not, so that a query cannot list every series).
    fn matches_empty(&self) -> bool {
        self.matches(&BTreeMap::new())
    }
}

/// Parse a `seriesByTag` argument list.
pub fn parse_exprs(specs: &[String]) -> Result<Vec<TagExpr>, String> {
    let exprs = specs
        .iter()
        .map(|s| TagExpr::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if exprs.is_empty() || exprs.iter().all(TagExpr::matches_empty) {
        return Err("at least one tagspec must not match the empty string".into());
    }
    Ok(exprs)
}

/// The tagged series among `names` that pass every expression, sorted.
pub fn find<'a>(names: impl Iterator<Item = &'a str>, exprs: &[TagExpr]) -> Vec<String> {
    let mut out: Vec<String> = names
        .filter(|n| is_tagged(n))
        .filter(|n| {
            let tags = parse(n);
            exprs.iter().all(|e| e.matches(&tags))
        })
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

/// Every tag of the tagged series in `names` (`name` included), sorted, optionally only those
/// matching `filter` (a regex, searched anywhere), at most `limit`.
pub fn list_tags<'a>(
    names: impl Iterator<Item = &'a str>,
    filter: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, String> {
    let filter = filter
        .filter(|f| !f.is_empty())
        .map(|f| regex_lite::Regex::new(f).map_err(|e| format!("invalid filter: {e}")))
        .transpose()?;
    let mut tags = BTreeSet::new();
    for n in names.filter(|n| is_tagged(n)) {
        tags.extend(parse(n).into_keys());
    }
    Ok(tags
        .into_iter()
        .filter(|t| filter.as_ref().is_none_or(|f| f.is_match(t)))
        .take(limit)
        .collect())
}

/// Tags for Grafana's autocompletion: those of the series matching `exprs` (every tagged
/// series when there are none) that are not already searched, starting with `prefix`.
pub fn complete_tags<'a>(
    names: impl Iterator<Item = &'a str>,
    exprs: &[TagExpr],
    prefix: &str,
    limit: usize,
) -> Vec<String> {
    let searched: BTreeSet<&str> = exprs.iter().map(TagExpr::tag).collect();
    let mut out = BTreeSet::new();
    for n in names.filter(|n| is_tagged(n)) {
        let tags = parse(n);
        if exprs.iter().all(|e| e.matches(&tags)) {
            out.extend(
                tags.into_keys()
                    .filter(|t| !searched.contains(t.as_str()) && t.starts_with(prefix)),
            );
        }
    }
    out.into_iter().take(limit).collect()
}

/// Values of `tag` for Grafana's autocompletion, among the series matching `exprs`.
pub fn complete_values<'a>(
    names: impl Iterator<Item = &'a str>,
    exprs: &[TagExpr],
    tag: &str,
    prefix: &str,
    limit: usize,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for n in names.filter(|n| is_tagged(n)) {
        let mut tags = parse(n);
        if exprs.iter().all(|e| e.matches(&tags))
            && let Some(v) = tags.remove(tag)
            && v.starts_with(prefix)
        {
            out.insert(v);
        }
    }
    out.into_iter().take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(
            normalize("cpu;host=b;dc=eu").as_deref(),
            Ok("cpu;dc=eu;host=b")
        );
        assert_eq!(normalize("a.b").as_deref(), Ok("a.b"));
        assert_eq!(normalize("cpu;dc=eu;dc=us").as_deref(), Ok("cpu;dc=us"));
        for bad in [
            ";a=b",
            "cpu;a",
            "cpu;=b",
            "cpu;a=",
            "cpu;a=~b",
            "cpu;name=x",
            "cpu;a!=b",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn series_by_tag() {
        let names = [
            "cpu;dc=eu;host=a",
            "cpu;dc=us;host=b",
            "mem;dc=eu;host=a",
            "plain.x",
        ];
        let find_all = |specs: &[&str]| {
            let specs: Vec<String> = specs.iter().map(|s| (*s).to_owned()).collect();
            find(names.into_iter(), &parse_exprs(&specs).expect("exprs"))
        };
        assert_eq!(
            find_all(&["name=cpu"]),
            ["cpu;dc=eu;host=a", "cpu;dc=us;host=b"]
        );
        assert_eq!(find_all(&["dc=eu", "name!=mem"]), ["cpu;dc=eu;host=a"]);
        assert_eq!(find_all(&["host=~b"]), ["cpu;dc=us;host=b"]);
        assert_eq!(find_all(&["name=~c", "dc!=~u"]), ["cpu;dc=eu;host=a"]);
        assert!(
            parse_exprs(&["dc!=eu".into()]).is_err(),
            "matches untagged everything"
        );
        assert!(parse_exprs(&["dc".into()]).is_err());
        assert!(parse_exprs(&["dc=~(".into()]).is_err());
        let exprs = parse_exprs(&["name=cpu".into()]).expect("exprs");
        assert_eq!(
            complete_tags(names.into_iter(), &exprs, "", 100),
            ["dc", "host"]
        );
        assert_eq!(
            complete_values(names.into_iter(), &exprs, "dc", "", 100),
            ["eu", "us"]
        );
        assert_eq!(
            list_tags(names.into_iter(), None, 100).expect("tags"),
            ["dc", "host", "name"]
        );
        assert_eq!(
            list_tags(names.into_iter(), Some("^h"), 100).expect("tags"),
            ["host"]
        );
    }
}
