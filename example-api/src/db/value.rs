//! The values and rows both backends speak: statement parameters ([`SqlValue`], bound by
//! rusqlite and by tokio-postgres) and result rows ([`DbRow`], decoded from either), plus the
//! one dialect step the shared SQL needs on PostgreSQL: `?`/`?N` placeholders become `$N`.

use super::DbError;
use deadpool_postgres::tokio_postgres::types::{IsNull, ToSql as PgToSql, Type, to_sql_checked};
use rusqlite::types::{ToSqlOutput, ValueRef};
use serde_json::Value;

/// One bound parameter or one column of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Int(v)
    }
}

impl From<&i64> for SqlValue {
    fn from(v: &i64) -> Self {
        SqlValue::Int(*v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<&String> for SqlValue {
    fn from(v: &String) -> Self {
        SqlValue::Text(v.clone())
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Int(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
        }))
    }
}

impl PgToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            SqlValue::Real(f) => f.to_sql(ty, out),
            SqlValue::Text(t) => t.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::FLOAT8
                | Type::TEXT
                | Type::VARCHAR
                | Type::NAME
        )
    }

    to_sql_checked!();
}

/// One result row, owned: the same shape whichever backend produced it.
#[derive(Debug, Clone)]
pub struct DbRow(pub Vec<SqlValue>);

impl DbRow {
    fn at(&self, i: usize) -> Result<&SqlValue, DbError> {
        self.0.get(i).ok_or(DbError::Column(i, "missing"))
    }

    pub fn int(&self, i: usize) -> Result<i64, DbError> {
        self.opt_int(i)?.ok_or(DbError::Column(i, "null"))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.at(i)? {
            SqlValue::Null => Ok(None),
            SqlValue::Int(v) => Ok(Some(*v)),
            _ => Err(DbError::Column(i, "not an integer")),
        }
    }

    pub fn real(&self, i: usize) -> Result<f64, DbError> {
        match self.at(i)? {
            SqlValue::Int(v) => Ok(*v as f64),
            SqlValue::Real(v) => Ok(*v),
            _ => Err(DbError::Column(i, "not a number")),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, DbError> {
        self.opt_text(i)?.ok_or(DbError::Column(i, "null"))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.at(i)? {
            SqlValue::Null => Ok(None),
            SqlValue::Text(v) => Ok(Some(v.clone())),
            _ => Err(DbError::Column(i, "not text")),
        }
    }

    pub fn json(&self, i: usize) -> Result<Value, DbError> {
        Ok(match self.at(i)? {
            SqlValue::Null => Value::Null,
            SqlValue::Int(v) => Value::from(*v),
            SqlValue::Real(v) => Value::from(*v),
            SqlValue::Text(v) => Value::from(v.clone()),
        })
    }

    pub(super) fn from_sqlite(row: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<DbRow> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(match row.get_ref(i)? {
                ValueRef::Null => SqlValue::Null,
                ValueRef::Integer(v) => SqlValue::Int(v),
                ValueRef::Real(v) => SqlValue::Real(v),
                ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => SqlValue::Text(hex::encode(b)),
            });
        }
        Ok(DbRow(out))
    }

    pub(super) fn from_postgres(
        row: &deadpool_postgres::tokio_postgres::Row,
    ) -> Result<DbRow, DbError> {
        let mut out = Vec::with_capacity(row.len());
        for (i, col) in row.columns().iter().enumerate() {
            let v = match *col.type_() {
                Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(SqlValue::Int),
                Type::INT4 => row
                    .try_get::<_, Option<i32>>(i)?
                    .map(|v| SqlValue::Int(v.into())),
                Type::INT2 => row
                    .try_get::<_, Option<i16>>(i)?
                    .map(|v| SqlValue::Int(v.into())),
                Type::BOOL => row
                    .try_get::<_, Option<bool>>(i)?
                    .map(|v| SqlValue::Int(v.into())),
                Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(SqlValue::Real),
                Type::FLOAT4 => row
                    .try_get::<_, Option<f32>>(i)?
                    .map(|v| SqlValue::Real(v.into())),
                Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                    row.try_get::<_, Option<String>>(i)?.map(SqlValue::Text)
                }
                _ => return Err(DbError::Column(i, "unsupported PostgreSQL type")),
            };
            out.push(v.unwrap_or(SqlValue::Null));
        }
        Ok(DbRow(out))
    }
}

/// `?` and `?N` placeholders (SQLite's) as `$N` (PostgreSQL's). The API's SQL has no `?` in
/// string literals, so a plain scan is exact.
pub fn to_postgres_placeholders(stmt: &str) -> String {
    let mut out = String::with_capacity(stmt.len() + 8);
    let mut next = 1;
    let mut chars = stmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        out.push('$');
        if chars.peek().is_some_and(char::is_ascii_digit) {
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                out.push(d);
            }
        } else {
            out.push_str(&next.to_string());
            next += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_become_numbered() {
        assert_eq!(
            super::to_postgres_placeholders("a = ? AND (b, c) < (?, ?) LIMIT ?"),
            "a = $1 AND (b, c) < ($2, $3) LIMIT $4"
        );
        assert_eq!(
            super::to_postgres_placeholders("SET x = ?2 WHERE id = ?1"),
            "SET x = $2 WHERE id = $1"
        );
    }
}
