//! A SQL statement and its bound values, as every domain module builds them and every worker
//! binds them (`edge::Db`). D1 has no compile-time query checking, so each module keeps its
//! statements beside the rules they enforce and tests them on SQLite.

/// A value bound to a `?N` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Int(i64),
    Null,
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Text(s.to_owned())
    }
}
impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Text(s)
    }
}
impl From<i64> for Param {
    fn from(n: i64) -> Self {
        Param::Int(n)
    }
}
impl From<Option<i64>> for Param {
    fn from(n: Option<i64>) -> Self {
        n.map_or(Param::Null, Param::Int)
    }
}
impl From<Option<String>> for Param {
    fn from(s: Option<String>) -> Self {
        s.map_or(Param::Null, Param::Text)
    }
}

/// One SQL statement with its parameters, ready to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Stmt {
    pub fn new(sql: impl Into<String>, params: Vec<Param>) -> Self {
        Self {
            sql: sql.into(),
            params,
        }
    }
}
