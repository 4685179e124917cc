//! Lists as RabbitMQ's management API serves them: sorted by name,
//! filtered by `name`, sorted by `sort` (`sort_reverse`), paged by `page`
//! and `page_size` (then wrapped in RabbitMQ's page object), and cut to
//! the `columns` asked for (dotted paths, e.g.
//! `message_stats.publish_details.rate`).
//!
//! Without `columns` or `sort`, items are serialised straight from their
//! structs, which keeps a list of 10,000 queues cheap.

use std::collections::HashMap;

use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config;
use crate::mgmt::api::json_response;
use crate::mgmt::error::ApiError;

pub(crate) type Params = HashMap<String, String>;

/// The list `items` (named by `name_of`) as the query parameters ask.
pub(crate) fn respond<T: Serialize>(
    mut items: Vec<T>,
    name_of: impl Fn(&T) -> &str,
    params: &Params,
) -> Result<Response, ApiError> {
    let total_count = items.len();
    if let Some(filter) = params.get("name").filter(|f| !f.is_empty()) {
        // RabbitMQ matches `name` as a regular expression with
        // use_regex=true; warren matches a substring either way.
        items.retain(|item| name_of(item).contains(filter.as_str()));
    }
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
    let columns: Option<Vec<Vec<&str>>> = params
        .get("columns")
        .filter(|c| !c.is_empty())
        .map(|c| c.split(',').map(|col| col.split('.').collect()).collect());
    let sort = params
        .get("sort")
        .filter(|s| !s.is_empty() && s.as_str() != "name");
    let reverse = params.get("sort_reverse").is_some_and(|r| r == "true");
    let filtered_count = items.len();
    if columns.is_none() && sort.is_none() {
        if reverse {
            items.reverse();
        }
        let items = paged(items, page);
        return Ok(wrap(items, page, filtered_count, total_count));
    }
    let mut values: Vec<Value> = items
        .iter()
        .map(|item| serde_json::to_value(item).unwrap_or(Value::Null))
        .collect();
    drop(items);
    if let Some(sort) = sort {
        let path: Vec<&str> = sort.split('.').collect();
        values.sort_by(|a, b| compare(at_path(a, &path), at_path(b, &path)));
    }
    if reverse {
        values.reverse();
    }
    let mut values = paged(values, page);
    if let Some(columns) = &columns {
        values = values
            .into_iter()
            .map(|value| select(&value, columns))
            .collect();
    }
    Ok(wrap(values, page, filtered_count, total_count))
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
    match page {
        None => json_response(&items),
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
            json_response(&Page {
                filtered_count,
                item_count: items.len(),
                items,
                page,
                page_count: filtered_count.div_ceil(page_size).max(1),
                page_size,
                total_count,
            })
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
fn select(value: &Value, columns: &[Vec<&str>]) -> Value {
    let mut out = Map::new();
    for path in columns {
        let Some(found) = at_path(value, path) else {
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
