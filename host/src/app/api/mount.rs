//! Mounting a [`Resource`]: the CRUD routes of `resource.rs`, each with its
//! OpenAPI description.

use utoipa::{
    ToSchema,
    openapi::{
        ContentBuilder, HttpMethod, Required, ResponseBuilder,
        path::{ParameterBuilder, ParameterIn},
        schema::{ObjectBuilder, Type},
    },
};

use super::{
    AppState,
    resource::{self, Resource, Writable},
};
use crate::platform::http::{
    openapi::{Api, Op, schema_ref},
    request::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MERGE_PATCH},
};

/// What every operation answers while the database is down.
const DATABASE_DOWN: &str = "The database is unavailable";

/// `GET` list, `GET` one and `DELETE` of `R`.
pub fn read_only<R: Resource>(mut api: Api<AppState>, tag: &str) -> Api<AppState> {
    api.schema::<R::Item>();
    let (collection, one) = read_ops::<R>(tag);
    api.route(R::PATH, axum::routing::get(resource::list::<R>), collection).route(
        &format!("{}/{{id}}", R::PATH),
        axum::routing::get(resource::read::<R>).delete(resource::delete::<R>),
        one,
    )
}

/// Every route of `W`: list, read, create, replace, patch and delete.
pub fn writable<W: Writable>(mut api: Api<AppState>, tag: &str) -> Api<AppState> {
    api.schema::<W::Item>();
    api.schema::<W::Input>();
    let item = W::Item::name();
    let input = W::Input::name();
    let (mut collection, mut one) = read_ops::<W>(tag);
    collection.push(
        Op::new(HttpMethod::Post, &format!("create_{}", W::NAME), &format!("Create a {}", W::NAME), tag)
            .json(201, "Created; `Location` gives its URL", schema_ref(&item))
            .problem(503, DATABASE_DOWN)
            .with_body("application/json", &input),
    );
    one.push(
        Op::new(HttpMethod::Put, &format!("replace_{}", W::NAME), &format!("Replace a {}", W::NAME), tag)
            .with_id()
            .json(200, "Replaced", schema_ref(&item))
            .problem(404, "No such id")
            .problem(503, DATABASE_DOWN)
            .with_body("application/json", &input),
    );
    one.push(
        Op::new(HttpMethod::Patch, &format!("patch_{}", W::NAME), &format!("Change a {} (JSON merge patch)", W::NAME), tag)
            .with_id()
            .json(200, "Changed", schema_ref(&item))
            .problem(404, "No such id")
            .problem(503, DATABASE_DOWN)
            .with_body(MERGE_PATCH, &input),
    );
    api.route(W::PATH, axum::routing::get(resource::list::<W>).post(resource::create::<W>), collection)
        .route(
            &format!("{}/{{id}}", W::PATH),
            axum::routing::get(resource::read::<W>)
                .put(resource::replace::<W>)
                .patch(resource::patch::<W>)
                .delete(resource::delete::<W>),
            one,
        )
}

fn read_ops<R: Resource>(tag: &str) -> (Vec<Op>, Vec<Op>) {
    let item = R::Item::name();
    let page = |name: &str, description: String| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
            .build()
    };
    let mut list = Op::new(HttpMethod::Get, &format!("list_{}", R::NAME), &format!("List {}s by id", R::NAME), tag);
    list.operation = list
        .operation
        .parameter(page("page", "Page number, from 0".into()))
        .parameter(page("size", format!("Page size, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})")));
    let array = utoipa::openapi::schema::ArrayBuilder::new().items(schema_ref(&item)).build();
    let list = list
        .response(
            200,
            ResponseBuilder::new()
                .description("One page; the total in `X-Total-Count`")
                .content("application/json", ContentBuilder::new().schema(Some(array)).build())
                .header(
                    "X-Total-Count",
                    utoipa::openapi::header::HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .build(),
                )
                .build(),
        )
        .problem(400, "A bad `page` or `size` (`field` names it)")
        .problem(503, DATABASE_DOWN);
    let read = Op::new(HttpMethod::Get, &format!("read_{}", R::NAME), &format!("Read a {}", R::NAME), tag)
        .with_id()
        .json(200, "Found", schema_ref(&item))
        .problem(404, "No such id")
        .problem(503, DATABASE_DOWN);
    let mut delete = Op::new(HttpMethod::Delete, &format!("delete_{}", R::NAME), &format!("Delete a {}", R::NAME), tag)
        .with_id()
        .response(204, ResponseBuilder::new().description("Deleted").build())
        .problem(404, "No such id");
    for (status, description) in R::delete_problems() {
        delete = delete.problem(*status, description);
    }
    let delete = delete.problem(503, "The database is unavailable, or the event of this document's last change is not published yet");
    (vec![list], vec![read, delete])
}
