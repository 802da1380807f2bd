//! The CRUD every resource shares, written once: handlers generic over a
//! [`Resource`], mounted together with their OpenAPI description so that the
//! router and the document cannot drift apart.
//!
//! | route | |
//! |---|---|
//! | `GET {path}?page&size` | a page sorted by id; `X-Total-Count` |
//! | `GET {path}/{id}` | one, or 404 |
//! | `DELETE {path}/{id}` | 204, or 404 (or what [`Resource::check_delete`] says) |
//! | `POST {path}` | [`Writable`] only: 201 + `Location` |
//! | `PUT {path}/{id}` | [`Writable`] only: full replacement |
//! | `PATCH {path}/{id}` | [`Writable`] only: JSON merge patch (RFC 7396) |

use std::future::Future;

use axum::{
    Json,
    body::Bytes,
    extract::{RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

use super::{AppState, listing};
use crate::{
    app::{
        domain::FieldError,
        storage::{Repo, StorageError},
    },
    platform::{
        http::{
            Problem,
            request::{Id, MERGE_PATCH, Paging, from_value, json_body, json_object},
        },
        kafka::Event,
        outbox::Pending,
    },
};

/// A resource of the API, backed by one collection.
pub trait Resource: Send + Sync + 'static {
    /// Singular, for messages: "store".
    const NAME: &'static str;
    /// Collection route: "/api/stores".
    const PATH: &'static str;
    const COLLECTION: &'static str;

    /// What the API returns.
    type Item: Serialize + ToSchema + From<Self::Doc> + Send + Sync + 'static;
    /// What MongoDB keeps.
    type Doc: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static;

    /// Refuses a deletion that would break something (409), or allows it.
    fn check_delete(_state: &AppState, _id: &str) -> impl Future<Output = Result<(), Problem>> + Send {
        async { Ok(()) }
    }

    /// Statuses `DELETE` may answer besides 204 and 404, for the document.
    fn delete_problems() -> &'static [(u16, &'static str)] {
        &[]
    }
}

/// A resource clients create and change.
pub trait Writable: Resource<Doc: for<'a> From<&'a Self::Item>> {
    /// What a client sends: POST and PUT bodies, and a PATCH's result.
    type Input: DeserializeOwned + ToSchema + Send + 'static;

    /// A new item with server id `id`.
    fn create(input: Self::Input, id: String, now: DateTime<Utc>) -> Result<Self::Item, FieldError>;
    /// The full replacement of `existing`.
    fn replace(input: Self::Input, existing: &Self::Item, now: DateTime<Utc>) -> Result<Self::Item, FieldError>;
    /// The id a client may propose in a POST body.
    fn proposed_id(input: &Self::Input) -> Option<&str>;
    fn id(item: &Self::Item) -> &str;
    /// Fields the server sets on every change: a PATCH that does not give
    /// them gets them anew instead of keeping the stored values.
    const REFRESHED_ON_PATCH: &'static [&'static str] = &[];
    /// The event an update (PUT or PATCH) produces, if any.
    fn updated_event(_item: &Self::Item) -> Option<Event<'_>> {
        None
    }
}

fn repo<R: Resource>(state: &AppState) -> Repo<R::Doc> {
    Repo::new(&state.database, R::COLLECTION)
}

fn not_found<R: Resource>(id: &str) -> Problem {
    Problem::not_found(format!("no {} with id '{id}'", R::NAME))
}

pub async fn list<R: Resource>(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, Problem> {
    let paging = Paging::from_query(query.as_deref())?;
    let page = repo::<R>(&state).list(paging.skip(), paging.size as i64).await?;
    let items: Vec<R::Item> = page.items.into_iter().map(R::Item::from).collect();
    Ok(listing(items, page.total))
}

pub async fn read<R: Resource>(State(state): State<AppState>, Id(id): Id) -> Result<Json<R::Item>, Problem> {
    let doc = repo::<R>(&state).get(&id).await?.ok_or_else(|| not_found::<R>(&id))?;
    Ok(Json(doc.into()))
}

/// How long a DELETE waits for the events of the document's last changes
/// to be published (the document holds them until then).
const DELETE_WAITS_FOR_EVENTS: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn delete<R: Resource>(State(state): State<AppState>, Id(id): Id) -> Result<StatusCode, Problem> {
    R::check_delete(&state, &id).await?;
    let repo = repo::<R>(&state);
    let deadline = tokio::time::Instant::now() + DELETE_WAITS_FOR_EVENTS;
    loop {
        match repo.delete(&id).await {
            Ok(true) => return Ok(StatusCode::NO_CONTENT),
            Ok(false) => return Err(not_found::<R>(&id)),
            Err(StorageError::EventsPending) if tokio::time::Instant::now() < deadline => {
                state.outbox.written(R::COLLECTION, &id);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn create<W: Writable>(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let input: W::Input = json_body(&headers, body)?;
    let id = match W::proposed_id(&input) {
        Some(id) => {
            crate::app::domain::check_proposed_id(id)?;
            id.to_string()
        }
        None => crate::app::domain::new_id(),
    };
    let item = W::create(input, id, Utc::now())?;
    repo::<W>(&state).insert(&W::Doc::from(&item)).await?;
    let location = format!("{}/{}", W::PATH, W::id(&item));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(item)).into_response())
}

pub async fn replace<W: Writable>(
    State(state): State<AppState>,
    Id(id): Id,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<W::Item>, Problem> {
    let input: W::Input = json_body(&headers, body)?;
    let existing: W::Item = repo::<W>(&state).get(&id).await?.ok_or_else(|| not_found::<W>(&id))?.into();
    let item = W::replace(input, &existing, Utc::now())?;
    save::<W>(&state, &existing, item).await
}

pub async fn patch<W: Writable>(
    State(state): State<AppState>,
    Id(id): Id,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<W::Item>, Problem> {
    let patch = json_object(&headers, body, &[MERGE_PATCH, "application/json"])?;
    let existing: W::Item = repo::<W>(&state).get(&id).await?.ok_or_else(|| not_found::<W>(&id))?.into();
    let mut merged = serde_json::to_value(&existing).map_err(|e| Problem::unavailable(e.to_string()))?;
    json_patch::merge(&mut merged, &patch);
    if let Some(merged) = merged.as_object_mut() {
        for field in W::REFRESHED_ON_PATCH {
            if patch.get(field).is_none() {
                merged.remove(*field);
            }
        }
    }
    let input: W::Input = from_value(merged)?;
    let item = W::replace(input, &existing, Utc::now())?;
    save::<W>(&state, &existing, item).await
}

/// Stores `item` over `existing`, with its event (if any) in the same
/// atomic write: the outbox's relay publishes it, now or once the broker is
/// back. The answer does not wait for the broker.
async fn save<W: Writable>(state: &AppState, existing: &W::Item, item: W::Item) -> Result<Json<W::Item>, Problem> {
    let id = W::id(existing);
    let repo = repo::<W>(state);
    let doc = W::Doc::from(&item);
    let saved = match W::updated_event(&item) {
        None => repo.replace(id, &doc).await?,
        Some(event) => {
            let pending = Pending::new(&event);
            let saved = repo.replace_announcing(id, &doc, &pending).await?;
            if saved {
                state.outbox.written(W::COLLECTION, id);
            }
            saved
        }
    };
    if !saved {
        return Err(not_found::<W>(id));
    }
    Ok(Json(item))
}
