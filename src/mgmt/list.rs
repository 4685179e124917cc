//! Lists as RabbitMQ's management API serves them: sorted by name,
//! filtered by `name`, sorted by `sort` (`sort_reverse`), paged by `page`
//! and `page_size` (then wrapped in RabbitMQ's page object), and cut to
//! the `columns` asked for (dotted paths, e.g.
//! `message_stats.publish_details.rate`).
//!
//! Items are serialised straight from their structs into one buffer
//! sized for them, which keeps a list of 10,000 queues cheap. `sort` and
//! `columns` read only the members they name (`members`: a serde
//! serializer that picks fields out of a struct as it passes them), and
//! without `sort` only the page's items are read at all.

use std::collections::HashMap;

use axum::response::Response;
use serde::ser::{Impossible, SerializeStruct, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config;
use crate::mgmt::api::{json_bytes_response, json_response_sized};
use crate::mgmt::error::ApiError;

pub(crate) type Params = HashMap<String, String>;

/// The query parameters of a list, checked.
struct Query<'p> {
    name: Option<&'p str>,
    page: Option<(usize, usize)>,
    columns: Option<Vec<Vec<&'p str>>>,
    sort: Option<&'p str>,
    reverse: bool,
}

fn query(params: &Params) -> Result<Query<'_>, ApiError> {
    let page = match params.get("page") {
        None => None,
        Some(page_text) => {
            let size_text = params.get("page_size");
            // RabbitMQ's refusal, naming both parameters as given.
            let invalid = || ApiError {
                status: axum::http::StatusCode::BAD_REQUEST,
                error: "invalid_pagination_parameters",
                reason: format!(
                    "Invalid pagination parameters: page number {}, page size {}",
                    page_text,
                    size_text.map_or("undefined", String::as_str)
                ),
            };
            let page: usize = page_text
                .parse()
                .ok()
                .filter(|&p| p >= 1)
                .ok_or_else(invalid)?;
            let page_size: usize = match size_text {
                None => config::MANAGEMENT_PAGE_SIZE,
                Some(size) => size
                    .parse()
                    .ok()
                    .filter(|&s| (1..=config::MANAGEMENT_PAGE_SIZE_MAX).contains(&s))
                    .ok_or_else(invalid)?,
            };
            Some((page, page_size))
        }
    };
    Ok(Query {
        // RabbitMQ matches `name` as a regular expression with
        // use_regex=true; warren matches a substring either way.
        name: params
            .get("name")
            .map(String::as_str)
            .filter(|f| !f.is_empty()),
        page,
        columns: params
            .get("columns")
            .filter(|c| !c.is_empty())
            .map(|c| c.split(',').map(|col| col.split('.').collect()).collect()),
        sort: params
            .get("sort")
            .map(String::as_str)
            .filter(|s| !s.is_empty() && *s != "name"),
        reverse: params.get("sort_reverse").is_some_and(|r| r == "true"),
    })
}

/// True if the parameters ask for members of the items (`sort` or
/// `columns`): then `respond` must have them as structs, and
/// `respond_rendered` cannot serve.
pub(crate) fn reads_members(params: &Params) -> bool {
    query(params).is_ok_and(|q| q.columns.is_some() || q.sort.is_some())
}

/// The list `items` (named by `name_of`), each already JSON (`json_of`),
/// as the query parameters ask; for lists whose items keep their JSON
/// from one call to the next. Only for parameters that do not read
/// members (`reads_members`).
pub(crate) fn respond_rendered<T>(
    mut items: Vec<T>,
    name_of: impl Fn(&T) -> &str,
    json_of: impl Fn(&T) -> &[u8],
    params: &Params,
) -> Result<Response, ApiError> {
    let query = query(params)?;
    debug_assert!(query.columns.is_none() && query.sort.is_none());
    let total_count = items.len();
    if let Some(filter) = query.name {
        items.retain(|item| name_of(item).contains(filter));
    }
    let filtered_count = items.len();
    if query.reverse {
        items.reverse();
    }
    let items = paged(items, query.page);
    let size: usize = items.iter().map(|item| json_of(item).len() + 1).sum();
    let mut body = Vec::with_capacity(size + 256);
    // RabbitMQ's page object, members in the order `wrap` writes them.
    if query.page.is_some() {
        body.extend_from_slice(
            format!(
                "{{\"filtered_count\":{filtered_count},\"item_count\":{},\"items\":",
                items.len()
            )
            .as_bytes(),
        );
    }
    body.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(json_of(item));
    }
    body.push(b']');
    if let Some((page, page_size)) = query.page {
        body.extend_from_slice(
            format!(
                ",\"page\":{page},\"page_count\":{},\"page_size\":{page_size},\"total_count\":{total_count}}}",
                filtered_count.div_ceil(page_size).max(1)
            )
            .as_bytes(),
        );
    }
    Ok(json_bytes_response(body))
}

/// The list `items` (named by `name_of`) as the query parameters ask.
pub(crate) fn respond<T: Serialize>(
    mut items: Vec<T>,
    name_of: impl Fn(&T) -> &str,
    params: &Params,
) -> Result<Response, ApiError> {
    let Query {
        name,
        page,
        columns,
        sort,
        reverse,
    } = query(params)?;
    let total_count = items.len();
    if let Some(filter) = name {
        items.retain(|item| name_of(item).contains(filter));
    }
    let filtered_count = items.len();
    if let Some(sort) = sort {
        let path: Vec<&str> = sort.split('.').collect();
        let mut keyed: Vec<(Option<Value>, T)> = items
            .into_iter()
            .map(|item| {
                let member = members(&item, &path[..1]).pop().flatten();
                let key = member.and_then(|m| at_path(&m, &path[1..]).cloned());
                (key, item)
            })
            .collect();
        // Stable: items with equal keys stay in name order.
        keyed.sort_by(|a, b| compare(a.0.as_ref(), b.0.as_ref()));
        items = keyed.into_iter().map(|(_, item)| item).collect();
    }
    if reverse {
        items.reverse();
    }
    let items = paged(items, page);
    match &columns {
        None => Ok(wrap(items, page, filtered_count, total_count)),
        Some(columns) => {
            let values: Vec<Value> = items.iter().map(|item| select(item, columns)).collect();
            Ok(wrap(values, page, filtered_count, total_count))
        }
    }
}

fn paged<T>(items: Vec<T>, page: Option<(usize, usize)>) -> Vec<T> {
    match page {
        None => items,
        Some((page, size)) => items
            .into_iter()
            .skip((page - 1).saturating_mul(size))
            .take(size)
            .collect(),
    }
}

fn wrap<T: Serialize>(
    items: Vec<T>,
    page: Option<(usize, usize)>,
    filtered_count: usize,
    total_count: usize,
) -> Response {
    // Sized from the first item, so that the buffer of a long list is
    // not copied as it grows.
    let item_size = items
        .first()
        .and_then(|item| serde_json::to_vec(item).ok())
        .map_or(0, |json| json.len() + 1);
    let capacity = item_size.saturating_mul(items.len()) + 256;
    match page {
        None => json_response_sized(&items, capacity),
        Some((page, page_size)) => {
            #[derive(Serialize)]
            struct Page<T> {
                filtered_count: usize,
                item_count: usize,
                items: Vec<T>,
                page: usize,
                page_count: usize,
                page_size: usize,
                total_count: usize,
            }
            json_response_sized(
                &Page {
                    filtered_count,
                    item_count: items.len(),
                    items,
                    page,
                    page_count: filtered_count.div_ceil(page_size).max(1),
                    page_size,
                    total_count,
                },
                capacity,
            )
        }
    }
}

fn at_path<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// The members named by `columns`, nested as in the item.
fn select<T: Serialize>(item: &T, columns: &[Vec<&str>]) -> Value {
    let mut tops: Vec<&str> = Vec::with_capacity(columns.len());
    for path in columns {
        if !tops.contains(&path[0]) {
            tops.push(path[0]);
        }
    }
    let found_tops = members(item, &tops);
    let mut out = Map::new();
    for path in columns {
        let Some(Some(top)) = tops
            .iter()
            .position(|t| *t == path[0])
            .map(|i| &found_tops[i])
        else {
            continue;
        };
        let Some(found) = at_path(top, &path[1..]) else {
            continue;
        };
        let mut slot = &mut out;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                slot.insert(key.to_string(), found.clone());
            } else {
                let entry = slot
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                let Value::Object(next) = entry else { break };
                slot = next;
            }
        }
    }
    Value::Object(out)
}

/// The members `keys` of `item`'s JSON object (None for a member it does
/// not have), read as the item serialises: only those members become
/// `Value`s. An item that is no struct (a `Value` built with `json!`)
/// becomes a `Value` whole, and its members are taken from that.
fn members<T: Serialize + ?Sized>(item: &T, keys: &[&str]) -> Vec<Option<Value>> {
    match item.serialize(Members { keys }) {
        Ok(found) => found,
        Err(NotAStruct) => match serde_json::to_value(item) {
            Ok(Value::Object(mut map)) => keys.iter().map(|key| map.remove(*key)).collect(),
            _ => vec![None; keys.len()],
        },
    }
}

/// `members`' answer when the item does not serialise as a struct.
#[derive(Debug)]
struct NotAStruct;

impl std::fmt::Display for NotAStruct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a struct")
    }
}

impl std::error::Error for NotAStruct {}

impl serde::ser::Error for NotAStruct {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        NotAStruct
    }
}

/// A serializer that accepts only a struct, and keeps the fields named
/// by `keys` as `Value`s.
struct Members<'k> {
    keys: &'k [&'k str],
}

/// The struct's fields as they pass.
struct FoundMembers<'k> {
    keys: &'k [&'k str],
    found: Vec<Option<Value>>,
}

impl SerializeStruct for FoundMembers<'_> {
    type Ok = Vec<Option<Value>>;
    type Error = NotAStruct;

    fn serialize_field<V: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &V,
    ) -> Result<(), NotAStruct> {
        if let Some(i) = self.keys.iter().position(|k| *k == key) {
            self.found[i] = Some(serde_json::to_value(value).map_err(|_| NotAStruct)?);
        }
        Ok(())
    }

    fn end(self) -> Result<Vec<Option<Value>>, NotAStruct> {
        Ok(self.found)
    }
}

/// Every kind of value but a struct is refused.
macro_rules! not_a_struct {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Self::Ok, NotAStruct> {
            Err(NotAStruct)
        })*
    };
}

impl<'k> Serializer for Members<'k> {
    type Ok = Vec<Option<Value>>;
    type Error = NotAStruct;
    type SerializeSeq = Impossible<Self::Ok, NotAStruct>;
    type SerializeTuple = Impossible<Self::Ok, NotAStruct>;
    type SerializeTupleStruct = Impossible<Self::Ok, NotAStruct>;
    type SerializeTupleVariant = Impossible<Self::Ok, NotAStruct>;
    type SerializeMap = Impossible<Self::Ok, NotAStruct>;
    type SerializeStruct = FoundMembers<'k>;
    type SerializeStructVariant = Impossible<Self::Ok, NotAStruct>;

    not_a_struct! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<V: Serialize + ?Sized>(self, value: &V) -> Result<Self::Ok, NotAStruct> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<V: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &V,
    ) -> Result<Self::Ok, NotAStruct> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<V: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &V,
    ) -> Result<Self::Ok, NotAStruct> {
        Err(NotAStruct)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotAStruct> {
        Err(NotAStruct)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotAStruct> {
        Err(NotAStruct)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotAStruct> {
        Err(NotAStruct)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotAStruct> {
        Err(NotAStruct)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotAStruct> {
        Err(NotAStruct)
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotAStruct> {
        Ok(FoundMembers {
            keys: self.keys,
            found: vec![None; self.keys.len()],
        })
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotAStruct> {
        Err(NotAStruct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Inner {
        rate: f64,
    }

    #[derive(Serialize)]
    struct Item {
        name: String,
        #[serde(rename = "type")]
        kind: &'static str,
        policy: Option<String>,
        details: Inner,
    }

    fn item() -> Item {
        Item {
            name: "q1".into(),
            kind: "classic",
            policy: None,
            details: Inner { rate: 1.5 },
        }
    }

    #[test]
    fn members_of_a_struct_are_its_json_members() {
        let item = item();
        let whole = serde_json::to_value(&item).unwrap();
        let keys = ["details", "type", "missing", "policy", "name"];
        let found = members(&item, &keys);
        for (key, found) in keys.iter().zip(found) {
            assert_eq!(found.as_ref(), whole.get(*key), "{key}");
        }
    }

    #[test]
    fn members_of_a_json_value_are_its_members() {
        let value = serde_json::json!({"name": "x", "n": 3});
        assert_eq!(
            members(&value, &["n", "name", "other"]),
            vec![Some(3.into()), Some("x".into()), None]
        );
    }

    #[test]
    fn selected_columns_nest_as_in_the_item() {
        let columns = vec![vec!["name"], vec!["details", "rate"], vec!["nope", "x"]];
        assert_eq!(
            select(&item(), &columns),
            serde_json::json!({"name": "q1", "details": {"rate": 1.5}})
        );
    }
}
