//! Graphite path patterns: components separated by `.`, each matched on its own with `*` (any
//! run of characters), `?` (one character), `[abc]`/`[a-z]`/`[!a]` (a class) and `{a,b}`
//! (alternatives). `*` never crosses a `.`, as in graphite-web.

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    components: Vec<Vec<Token>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(u8),
    Star,
    Any,
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
    Alternatives(Vec<Vec<u8>>),
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty pattern or empty component.
    #[error("empty path component in pattern `{0}`")]
    Empty(String),
    /// `[` or `{` without its closing bracket.
    #[error("unclosed `{1}` in pattern `{0}`")]
    Unclosed(String, char),
    /// Characters a path cannot contain.
    #[error("pattern `{0}` has characters a metric path cannot contain")]
    Chars(String),
    /// Longer than any path.
    #[error("pattern longer than 1024 bytes")]
    TooLong,
}

fn parse_component(text: &[u8], whole: &str) -> Result<Vec<Token>, PatternError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        match b {
            b'*' => {
                // `**` is `*`.
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            b'?' => out.push(Token::Any),
            b'[' => {
                let end = text[i + 1..]
                    .iter()
                    .position(|&c| c == b']')
                    .ok_or_else(|| PatternError::Unclosed(whole.into(), '['))?
                    + i
                    + 1;
                let mut body = &text[i + 1..end];
                let negated = matches!(body.first(), Some(b'!' | b'^'));
                if negated {
                    body = &body[1..];
                }
                let mut ranges = Vec::new();
                let mut j = 0;
                while j < body.len() {
                    if j + 2 < body.len() && body[j + 1] == b'-' {
                        ranges.push((body[j], body[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((body[j], body[j]));
                        j += 1;
                    }
                }
                out.push(Token::Class { negated, ranges });
                i = end;
            }
            b'{' => {
                let end = text[i + 1..]
                    .iter()
                    .position(|&c| c == b'}')
                    .ok_or_else(|| PatternError::Unclosed(whole.into(), '{'))?
                    + i
                    + 1;
                let alts = text[i + 1..end]
                    .split(|&c| c == b',')
                    .map(<[u8]>::to_vec)
                    .collect();
                out.push(Token::Alternatives(alts));
                i = end;
            }
            b if crate::name::is_name_byte(b) => out.push(Token::Literal(b)),
            _ => return Err(PatternError::Chars(whole.into())),
        }
        i += 1;
    }
    Ok(out)
}

impl Pattern {
    /// Parse `text`.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.len() > 1024 {
            return Err(PatternError::TooLong);
        }
        // Split on dots outside braces (`{a.b,c}` is not supported: a component never has dots).
        let components = text
            .split('.')
            .map(|c| {
                if c.is_empty() {
                    Err(PatternError::Empty(text.into()))
                } else {
                    parse_component(c.as_bytes(), text)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pattern { components })
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.components.len()
    }

    /// Whether the pattern has no wildcard at all.
    pub fn is_literal(&self) -> bool {
        self.components
            .iter()
            .all(|c| c.iter().all(|t| matches!(t, Token::Literal(_))))
    }

    /// Whether the first [`Pattern::depth`] components of `path` match (`path` may be deeper).
    pub fn matches_prefix(&self, path: &str) -> bool {
        let mut parts = path.split('.');
        self.components.iter().all(|tokens| {
            parts
                .next()
                .is_some_and(|p| match_tokens(tokens, p.as_bytes()))
        })
    }

    /// Whether `path` matches exactly (same number of components).
    pub fn matches(&self, path: &str) -> bool {
        path.split('.').count() == self.components.len() && self.matches_prefix(path)
    }
}

/// Match one component: the set of text positions reachable after each token (no
/// backtracking, so `*a*a*a*b` costs tokens × length, not an exponential).
fn match_tokens(tokens: &[Token], text: &[u8]) -> bool {
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for token in tokens {
        let mut next = vec![false; text.len() + 1];
        for pos in (0..=text.len()).filter(|&p| reach[p]) {
            match token {
                Token::Star => {
                    next[pos..].iter_mut().for_each(|r| *r = true);
                    break;
                }
                Token::Literal(b) => {
                    if text.get(pos) == Some(b) {
                        next[pos + 1] = true;
                    }
                }
                Token::Any => {
                    if pos < text.len() {
                        next[pos + 1] = true;
                    }
                }
                Token::Class { negated, ranges } => {
                    if let Some(c) = text.get(pos)
                        && ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&c)) != *negated
                    {
                        next[pos + 1] = true;
                    }
                }
                Token::Alternatives(alts) => {
                    for a in alts {
                        if text[pos..].starts_with(a) {
                            next[pos + a.len()] = true;
                        }
                    }
                }
            }
        }
        reach = next;
    }
    reach[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, path: &str) -> bool {
        Pattern::parse(p).expect("pattern").matches(path)
    }

    #[test]
    fn wildcards() {
        assert!(m("a.b.c", "a.b.c"));
        assert!(!m("a.b", "a.b.c"));
        assert!(m("a.*.c", "a.xyz.c"));
        assert!(!m("a.*", "a.b.c"), "* stays in its component");
        assert!(m("a.b*", "a.b"));
        assert!(m("a.b*d", "a.bcd"));
        assert!(m("web?.load", "web1.load"));
        assert!(!m("web?.load", "web.load"));
        assert!(m("web[0-9].x", "web3.x"));
        assert!(!m("web[!0-9].x", "web3.x"));
        assert!(m("{cpu,mem}.used", "mem.used"));
        assert!(!m("{cpu,mem}.used", "disk.used"));
        assert!(m(
            "stats.timers.*.upper_{90,99}",
            "stats.timers.api.upper_99"
        ));
        assert!(Pattern::parse("a.b").expect("p").matches_prefix("a.b.c"));
        assert!(Pattern::parse("a..b").is_err());
        assert!(Pattern::parse("a.[b").is_err());
        assert!(Pattern::parse("a b").is_err());
        assert!(Pattern::parse("a.b").expect("p").is_literal());
        let slow = format!("{}b", "*a".repeat(40));
        assert!(!m(&slow, &"a".repeat(200)), "no exponential backtracking");
        assert!(!Pattern::parse("a.*").expect("p").is_literal());
    }

    proptest! {
        #[test]
        fn never_panics(p in "[a-z.*?\\[\\]{},!-]{0,20}", path in "[a-z.]{0,20}") {
            if let Ok(p) = Pattern::parse(&p) {
                let _ = p.matches(&path);
            }
        }

        #[test]
        fn a_literal_path_matches_itself(path in "[a-z0-9_]{1,8}(\\.[a-z0-9_]{1,8}){0,4}") {
            prop_assert!(Pattern::parse(&path).expect("literal").matches(&path));
        }
    }
}
