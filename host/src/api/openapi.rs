//! Mounts routes together with their OpenAPI 3 description, so that every
//! route the router has is in the document served at `GET /openapi.json`.

use axum::{Router, routing::MethodRouter};
use utoipa::{
    ToSchema,
    openapi::{
        ContentBuilder, HttpMethod, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Ref, RefOr,
        Required, ResponseBuilder, Schema,
        path::{OperationBuilder, ParameterBuilder, ParameterIn},
        request_body::RequestBodyBuilder,
        schema::{ComponentsBuilder, ObjectBuilder, Type},
    },
};

use super::{
    AppState, Problem,
    request::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MERGE_PATCH},
    resource::{self, Resource, Writable},
};

/// A router under construction, and the document that describes it.
pub struct Api {
    router: Router<AppState>,
    paths: PathsBuilder,
    schemas: Vec<(String, RefOr<Schema>)>,
}

/// One documented operation.
pub struct Op {
    method: HttpMethod,
    operation: OperationBuilder,
}

fn schema_ref(name: &str) -> Ref {
    Ref::from_schema_name(name)
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", ContentBuilder::new().schema(Some(schema_ref("Problem"))).build())
        .build()
}

fn json(description: &str, schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

fn id_parameter() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name("id")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn body(content_type: &str, schema: &str) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content(content_type, ContentBuilder::new().schema(Some(schema_ref(schema))).build())
        .build()
}

impl Op {
    pub fn new(method: HttpMethod, id: &str, summary: &str, tag: &str) -> Self {
        let operation = OperationBuilder::new().operation_id(Some(id)).summary(Some(summary)).tag(tag);
        Op { method, operation }
    }

    pub fn response(mut self, status: u16, response: utoipa::openapi::Response) -> Self {
        self.operation = self.operation.response(status.to_string(), response);
        self
    }

    pub fn json(self, status: u16, description: &str, schema: impl Into<RefOr<Schema>>) -> Self {
        self.response(status, json(description, schema))
    }

    pub fn problem(self, status: u16, description: &str) -> Self {
        self.response(status, problem(description))
    }

    fn with_id(mut self) -> Self {
        self.operation = self.operation.parameter(id_parameter());
        self
    }

    fn with_body(mut self, content_type: &str, schema: &str) -> Self {
        self.operation = self.operation.request_body(Some(body(content_type, schema)));
        self.problem(400, "Malformed JSON, or a field missing, blank or of the wrong type (`field` names it)")
            .problem(413, "The body is larger than the server accepts")
            .problem(415, "The content type is not the one expected")
    }
}

impl Default for Api {
    fn default() -> Self {
        let mut api = Api { router: Router::new(), paths: PathsBuilder::new(), schemas: Vec::new() };
        api.schema::<Problem>();
        api
    }
}

impl Api {
    /// Adds `T`'s schema and those it refers to.
    pub fn schema<T: ToSchema>(&mut self) {
        self.schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(&mut self.schemas);
    }

    /// Mounts `methods` at `path`, described by `ops`.
    pub fn route(mut self, path: &str, methods: MethodRouter<AppState>, ops: Vec<Op>) -> Self {
        self.router = self.router.route(path, methods);
        self.describe(path, ops)
    }

    /// Describes a route the caller mounts itself.
    pub fn describe(mut self, path: &str, ops: Vec<Op>) -> Self {
        for op in ops {
            self.paths = self.paths.path(path, PathItem::new(op.method, op.operation.build()));
        }
        self
    }

    /// `GET` list, `GET` one and `DELETE` of `R`.
    pub fn read_only<R: Resource>(mut self, tag: &str) -> Self {
        self.schema::<R::Item>();
        let (collection, one) = read_ops::<R>(tag);
        self.route(R::PATH, axum::routing::get(resource::list::<R>), collection).route(
            &format!("{}/{{id}}", R::PATH),
            axum::routing::get(resource::read::<R>).delete(resource::delete::<R>),
            one,
        )
    }

    /// Every route of `W`: list, read, create, replace, patch and delete.
    pub fn writable<W: Writable>(mut self, tag: &str) -> Self {
        self.schema::<W::Item>();
        self.schema::<W::Input>();
        let item = W::Item::name();
        let input = W::Input::name();
        let (mut collection, mut one) = read_ops::<W>(tag);
        collection.push(
            Op::new(HttpMethod::Post, &format!("create_{}", W::NAME), &format!("Create a {}", W::NAME), tag)
                .json(201, "Created; `Location` gives its URL", schema_ref(&item))
                .with_body("application/json", &input),
        );
        one.push(
            Op::new(HttpMethod::Put, &format!("replace_{}", W::NAME), &format!("Replace a {}", W::NAME), tag)
                .with_id()
                .json(200, "Replaced", schema_ref(&item))
                .problem(404, "No such id")
                .with_body("application/json", &input),
        );
        one.push(
            Op::new(HttpMethod::Patch, &format!("patch_{}", W::NAME), &format!("Change a {} (JSON merge patch)", W::NAME), tag)
                .with_id()
                .json(200, "Changed", schema_ref(&item))
                .problem(404, "No such id")
                .with_body(MERGE_PATCH, &input),
        );
        self.route(W::PATH, axum::routing::get(resource::list::<W>).post(resource::create::<W>), collection)
            .route(
                &format!("{}/{{id}}", W::PATH),
                axum::routing::get(resource::read::<W>)
                    .put(resource::replace::<W>)
                    .patch(resource::patch::<W>)
                    .delete(resource::delete::<W>),
                one,
            )
    }

    pub fn finish(self) -> (Router<AppState>, OpenApi) {
        let mut components = ComponentsBuilder::new();
        for (name, schema) in self.schemas {
            components = components.schema(name, schema);
        }
        let doc = OpenApiBuilder::new()
            .info(
                InfoBuilder::new()
                    .title("Runnel")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some("Resources of the Runnel host. Every error is application/problem+json."))
                    .build(),
            )
            .paths(self.paths.build())
            .components(Some(components.build()))
            .build();
        (self.router, doc)
    }
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
        .problem(400, "A bad `page` or `size` (`field` names it)");
    let read = Op::new(HttpMethod::Get, &format!("read_{}", R::NAME), &format!("Read a {}", R::NAME), tag)
        .with_id()
        .json(200, "Found", schema_ref(&item))
        .problem(404, "No such id");
    let mut delete = Op::new(HttpMethod::Delete, &format!("delete_{}", R::NAME), &format!("Delete a {}", R::NAME), tag)
        .with_id()
        .response(204, ResponseBuilder::new().description("Deleted").build())
        .problem(404, "No such id");
    for (status, description) in R::delete_problems() {
        delete = delete.problem(*status, description);
    }
    (vec![list], vec![read, delete])
}
