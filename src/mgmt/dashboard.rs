//! The web dashboard: static pages built under `dashboard/` (see its
//! `build` script) and compiled into the binary, served by the management
//! listener at `/`. The pages read only the management API, with the
//! user's credentials, so serving them needs no authentication and costs
//! the shards nothing.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

include!("../../dashboard/dist/assets.rs");

/// The dashboard's routes: `/` (the single page) and each asset.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new().route("/", get(|| async { asset("/index.html") }));
    for (path, _, _) in DASHBOARD_ASSETS {
        router = router.route(path, get(move || async move { asset(path) }));
    }
    router
}

fn asset(path: &str) -> Response {
    let Some((_, content_type, bytes)) = DASHBOARD_ASSETS.iter().find(|(p, _, _)| *p == path)
    else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The pages change with the binary: always revalidate.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        *bytes,
    )
        .into_response()
}
