//! Pages of a list: how many rows a request asks for (`limit`) and where the page before it
//! ended (`cursor`), read from the query by one rule ([`PageRule`]), and the one cursor codec
//! ([`CursorFormat`]). Pure, so tested natively; the api reads the query values from its request
//! (`api-worker/src/request.rs`).
//!
//! The lists grew up apart, and clients depend on what each one says: so the parameter names,
//! the default and largest limit and the code of a bad limit are each list's own (a rule per
//! list), and so is its cursor format, which stays byte for byte what it was (clients keep
//! cursors). What every list shares: a limit is an integer from 1 to the largest, with the
//! message "{name} must be an integer from 1 to {max}"; a cursor the list did not issue is 400
//! `invalid_cursor`, "{name} is not one we issued"; the limit is checked first.

use crate::sql::Param;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// A bad page parameter: a stable code and a message for the caller (the api answers 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageError {
    pub code: &'static str,
    pub message: String,
}

/// A page asked for: at most `limit` rows, after the position `before` (`(at, id)` of the last
/// row of the page before, newest first); `None`: the first page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub before: Option<(i64, String)>,
}

/// Reads a cursor a list issued: the position it holds, or `None` for anything else.
pub type CursorDecoder = fn(&str) -> Option<(i64, String)>;

/// How one list reads its page from the query.
#[derive(Debug, Clone, Copy)]
pub struct PageRule {
    pub limit_param: &'static str,
    pub cursor_param: &'static str,
    pub default_limit: i64,
    pub max_limit: i64,
    /// The code of a bad limit.
    pub limit_code: &'static str,
    /// `None`: the list takes no cursor, and a cursor parameter is not read.
    pub cursor: Option<CursorDecoder>,
}

impl PageRule {
    /// `?limit=` from 1 to `max_limit`, `default_limit` when absent, 400 `invalid_limit`
    /// otherwise; no cursor.
    pub const fn new(default_limit: i64, max_limit: i64) -> Self {
        PageRule {
            limit_param: "limit",
            cursor_param: "cursor",
            default_limit,
            max_limit,
            limit_code: "invalid_limit",
            cursor: None,
        }
    }

    /// The same, continued by `?cursor=` as `decode` reads it.
    pub const fn with_cursor(self, decode: CursorDecoder) -> Self {
        PageRule {
            cursor: Some(decode),
            ..self
        }
    }

    /// The same under other parameter names (a list embedded in a larger answer).
    pub const fn named(self, limit_param: &'static str, cursor_param: &'static str) -> Self {
        PageRule {
            limit_param,
            cursor_param,
            ..self
        }
    }

    /// The same, with another code for a bad limit.
    pub const fn with_limit_code(self, limit_code: &'static str) -> Self {
        PageRule { limit_code, ..self }
    }

    /// The page asked for by the values of the rule's parameters (`None`: absent).
    pub fn parse(&self, limit: Option<&str>, cursor: Option<&str>) -> Result<Page, PageError> {
        let limit = match limit {
            None => self.default_limit,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=self.max_limit).contains(n))
                .ok_or_else(|| PageError {
                    code: self.limit_code,
                    message: format!(
                        "{} must be an integer from 1 to {}",
                        self.limit_param, self.max_limit
                    ),
                })?,
        };
        let before = match (self.cursor, cursor) {
            (Some(decode), Some(c)) => Some(decode(c).ok_or_else(|| PageError {
                code: "invalid_cursor",
                message: format!("{} is not one we issued", self.cursor_param),
            })?),
            _ => None,
        };
        Ok(Page { limit, before })
    }
}

impl Page {
    /// The position as the three parameters of a keyset query, in this order: `at` (capped at
    /// 2^52, so it stays exact as the JS number D1 binds it as), `id`, and 1 on the first page
    /// (where `at` and `id` mean nothing).
    pub fn keyset(&self) -> [Param; 3] {
        let (at, id) = self.before.clone().unwrap_or((i64::MAX, String::new()));
        [
            Param::Int(at.min(1 << 52)),
            Param::Text(id),
            Param::Int(i64::from(self.before.is_none())),
        ]
    }

    /// The rows of the page among `rows`, which were fetched `limit + 1` at most (one more than
    /// the page says whether another page follows), and the cursor `cursor` writes for the last
    /// of them when one does.
    pub fn split<T>(
        &self,
        mut rows: Vec<T>,
        cursor: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let size = usize::try_from(self.limit).unwrap_or(0);
        let more = rows.len() > size;
        rows.truncate(size);
        let next = if more { rows.last().map(cursor) } else { None };
        (rows, next)
    }
}

/// How a list writes its cursors: URL-safe base64 (no padding) of the position, either `Plain`,
/// `{at}:{id}` (the tasks and the operators' lists), or `Tagged(tag)`, `{tag}.{at}.{id}` (the
/// shares write `h1`, the statement `l1` (`statement`), the sync feed `s1`
/// (`history::SyncPos`); those two check the position further themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorFormat {
    Plain,
    Tagged(&'static str),
}

impl CursorFormat {
    /// The cursor after the row at `(at, id)`.
    pub fn encode(self, at: i64, id: &str) -> String {
        match self {
            CursorFormat::Plain => URL_SAFE_NO_PAD.encode(format!("{at}:{id}")),
            CursorFormat::Tagged(tag) => URL_SAFE_NO_PAD.encode(format!("{tag}.{at}.{id}")),
        }
    }

    /// The position a cursor in this format holds, its id as written (the list checks it), or
    /// `None` when it is not in this format.
    pub fn decode(self, cursor: &str) -> Option<(i64, String)> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
        let (at, id) = match self {
            CursorFormat::Plain => raw.split_once(':')?,
            CursorFormat::Tagged(tag) => {
                raw.strip_prefix(tag)?.strip_prefix('.')?.split_once('.')?
            }
        };
        Some((at.parse().ok()?, id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: PageRule = PageRule::new(50, 200).with_cursor(|c| CursorFormat::Plain.decode(c));

    fn error(code: &'static str, message: &str) -> Result<Page, PageError> {
        Err(PageError {
            code,
            message: message.to_owned(),
        })
    }

    #[test]
    fn an_absent_limit_is_the_default_and_a_present_one_is_checked() {
        let rule = PageRule::new(20, 100);
        assert_eq!(rule.parse(None, None).map(|p| p.limit), Ok(20));
        assert_eq!(rule.parse(Some("1"), None).map(|p| p.limit), Ok(1));
        assert_eq!(rule.parse(Some("100"), None).map(|p| p.limit), Ok(100));
        for bad in ["0", "101", "-1", "", "ten", "1.5", " 5"] {
            assert_eq!(
                rule.parse(Some(bad), None),
                error("invalid_limit", "limit must be an integer from 1 to 100"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_rule_keeps_its_names_and_its_code() {
        let me = PageRule::new(20, 100)
            .with_cursor(|_| None)
            .named("ledger_limit", "ledger_cursor");
        assert_eq!(
            me.parse(Some("0"), None),
            error(
                "invalid_limit",
                "ledger_limit must be an integer from 1 to 100"
            )
        );
        assert_eq!(
            me.parse(None, Some("x")),
            error("invalid_cursor", "ledger_cursor is not one we issued")
        );
        let signins = PageRule::new(50, 200).with_limit_code("invalid_query");
        assert_eq!(
            signins.parse(Some("201"), None),
            error("invalid_query", "limit must be an integer from 1 to 200")
        );
    }

    #[test]
    fn the_limit_is_checked_before_the_cursor() {
        assert_eq!(
            PLAIN.parse(Some("0"), Some("%%%")),
            error("invalid_limit", "limit must be an integer from 1 to 200")
        );
        assert_eq!(
            PLAIN.parse(Some("5"), Some("%%%")),
            error("invalid_cursor", "cursor is not one we issued")
        );
    }

    #[test]
    fn a_list_without_cursors_ignores_one() {
        assert_eq!(
            PageRule::new(20, 100).parse(None, Some("%%%")),
            Ok(Page {
                limit: 20,
                before: None
            })
        );
    }

    #[test]
    fn cursors_are_what_the_lists_always_wrote() {
        // clients hold cursors: these bytes may never change
        assert_eq!(
            CursorFormat::Plain.encode(1700000000, "ab:c"),
            URL_SAFE_NO_PAD.encode("1700000000:ab:c")
        );
        assert_eq!(
            CursorFormat::Tagged("h1").encode(5, "x"),
            URL_SAFE_NO_PAD.encode("h1.5.x")
        );
        assert_eq!(
            PLAIN.parse(None, Some(&URL_SAFE_NO_PAD.encode("17:id:with:colons"))),
            Ok(Page {
                limit: 50,
                before: Some((17, "id:with:colons".into()))
            })
        );
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        for format in [CursorFormat::Plain, CursorFormat::Tagged("h1")] {
            for (at, id) in [
                (0, ""),
                (-3, "a"),
                (1 << 52, "0b1e7a4c-0000-4000-8000-000000000000"),
            ] {
                assert_eq!(
                    format.decode(&format.encode(at, id)),
                    Some((at, id.to_owned()))
                );
            }
        }
        let h1 = CursorFormat::Tagged("h1");
        assert_eq!(h1.decode(&CursorFormat::Plain.encode(5, "x")), None);
        assert_eq!(CursorFormat::Plain.decode(&h1.encode(5, "x")), None);
        assert_eq!(h1.decode(&CursorFormat::Tagged("l1").encode(5, "x")), None);
        assert_eq!(h1.decode(&URL_SAFE_NO_PAD.encode("h15.x")), None);
        for junk in [
            "",
            "%%%",
            "bm9wZQ",
            &URL_SAFE_NO_PAD.encode("x:y"),
            &URL_SAFE_NO_PAD.encode([0xff, b':', b'1']),
        ] {
            assert_eq!(CursorFormat::Plain.decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn the_keyset_of_a_first_page_and_of_a_later_one() {
        let first = Page {
            limit: 5,
            before: None,
        };
        assert_eq!(
            first.keyset(),
            [
                Param::Int(1 << 52),
                Param::Text(String::new()),
                Param::Int(1)
            ]
        );
        let later = Page {
            limit: 5,
            before: Some((42, "b".into())),
        };
        assert_eq!(
            later.keyset(),
            [Param::Int(42), Param::Text("b".into()), Param::Int(0)]
        );
    }

    #[test]
    fn a_split_page_names_its_successor_only_when_there_is_one() {
        let page = Page {
            limit: 2,
            before: None,
        };
        let cursor = |n: &i64| n.to_string();
        assert_eq!(
            page.split(vec![9, 8, 7], cursor),
            (vec![9, 8], Some("8".into()))
        );
        assert_eq!(page.split(vec![9, 8], cursor), (vec![9, 8], None));
        assert_eq!(page.split(Vec::<i64>::new(), cursor), (vec![], None));
    }
}
