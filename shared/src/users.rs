//! Users (`users`) as operators create and find them. A user's email is unique (the schema's
//! index refuses a second one); a new user starts with no credits of its own, and a starting
//! gift is a ledger grant (`ledger::signup_gift`). Sessions and sign-ins are `session`'s; the
//! user's own view of their account is `statement`'s.

use crate::ids::UserId;
use crate::page::Page;
use crate::sql::{Param, Stmt};

/// A new user `user` with `email` and `name`, created at `at`.
pub fn create(user: &UserId, email: &str, name: &str, at: i64) -> Stmt {
    Stmt::new(
        "INSERT INTO users (id, email, name, credits, created_at, updated_at) VALUES (?1, ?2, ?3, 0, ?4, ?4)",
        vec![user.to_string().into(), email.into(), name.into(), at.into()],
    )
}

/// A row (its id) if the user exists.
pub fn exists(user: &UserId) -> Stmt {
    Stmt::new(
        "SELECT id FROM users WHERE id = ?1",
        vec![user.to_string().into()],
    )
}

/// The user's email (`email`), if the user exists.
pub fn email(user: &UserId) -> Stmt {
    Stmt::new(
        "SELECT email FROM users WHERE id = ?1",
        vec![user.to_string().into()],
    )
}

/// The user as operators see it.
pub fn row(user: &UserId) -> Stmt {
    Stmt::new(
        "SELECT id, email, name, created_at, updated_at FROM users WHERE id = ?1",
        vec![user.to_string().into()],
    )
}

/// The `LIKE` pattern of the emails starting with `prefix`: its own wildcards (and the escape
/// character) are escaped with `\`.
fn email_prefix(prefix: &str) -> String {
    format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// The operators' page of users, newest first: with `q`, those whose id is `q` or whose email
/// starts with it; after the page's position, `page.limit + 1` rows to learn whether another
/// page follows.
pub fn search(q: Option<String>, page: &Page) -> Stmt {
    let [at, id, first] = page.keyset();
    let prefix = q.as_deref().map(email_prefix);
    Stmt::new(
        "SELECT id, email, name, created_at FROM users
         WHERE (?1 IS NULL OR id = ?1 OR email LIKE ?2 ESCAPE '\\')
           AND (?5 = 1 OR created_at < ?3 OR (created_at = ?3 AND id < ?4))
         ORDER BY created_at DESC, id DESC LIMIT ?6",
        vec![
            q.into(),
            prefix.into(),
            at,
            id,
            first,
            Param::Int(page.limit + 1),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{db, exec};
    use crate::history::tests::rows;
    use serde_json::{json, Value};

    #[test]
    fn a_user_is_created_once_per_email_and_read_back() {
        let conn = db();
        let u = UserId::new();
        assert_eq!(exec(&conn, &create(&u, "a@x.test", "A", 10)), 1);
        let row = rows(&conn, &row(&u)).remove(0);
        assert_eq!(
            row,
            json!({"id": u.to_string(), "email": "a@x.test", "name": "A", "created_at": 10, "updated_at": 10})
        );
        assert_eq!(rows(&conn, &email(&u))[0]["email"], "a@x.test");
        assert_eq!(rows(&conn, &exists(&u)).len(), 1);
        let nobody = UserId::new();
        assert!(rows(&conn, &exists(&nobody)).is_empty());
        assert!(rows(&conn, &email(&nobody)).is_empty());
        let again = create(&nobody, "a@x.test", "B", 11);
        let refused = conn
            .execute(
                &again.sql,
                rusqlite::params_from_iter(again.params.iter().map(crate::audit::tests::value)),
            )
            .unwrap_err();
        assert!(refused
            .to_string()
            .contains("UNIQUE constraint failed: users.email"));
    }

    #[test]
    fn search_matches_an_id_or_an_email_prefix_taken_literally() {
        let conn = db();
        let mut made = Vec::new();
        for (email, at) in [
            ("ann@x.test", 10),
            ("a_b@x.test", 20),
            ("axb@x.test", 30),
            ("bob@x.test", 30),
        ] {
            let u = UserId::new();
            exec(&conn, &create(&u, email, "n", at));
            made.push(u);
        }
        let first = Page {
            limit: 10,
            before: None,
        };
        let emails = |q: Option<&str>, page: &Page| -> Vec<Value> {
            rows(&conn, &search(q.map(str::to_owned), page))
                .into_iter()
                .map(|r| r["email"].clone())
                .collect()
        };
        assert_eq!(
            emails(Some("a_"), &first),
            [json!("a_b@x.test")],
            "_ is no wildcard"
        );
        assert_eq!(emails(Some("a%"), &first), Vec::<Value>::new(), "nor is %");
        assert_eq!(emails(Some("a"), &first).len(), 3);
        assert_eq!(
            emails(Some(&made[3].to_string()), &first),
            [json!("bob@x.test")]
        );
        assert_eq!(emails(None, &first).len(), 4);
        let two = Page {
            limit: 2,
            before: None,
        };
        assert_eq!(emails(None, &two).len(), 3, "one more than the page");
        let (ids_at_30, mut both) = (30, vec![made[2].to_string(), made[3].to_string()]);
        both.sort();
        let after = Page {
            limit: 10,
            before: Some((ids_at_30, both[1].clone())),
        };
        assert_eq!(
            emails(None, &after).len(),
            3,
            "the other of second 30, then the older two"
        );
        assert_eq!(email_prefix("a\\b"), "a\\\\b%");
    }
}
