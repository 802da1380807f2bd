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

use super::Problem;

/// A router under construction, and the document that describes it.
pub struct Api<S> {
    router: Router<S>,
    paths: PathsBuilder,
    schemas: Vec<(String, RefOr<Schema>)>,
}

/// One documented operation.
pub struct Op {
    pub method: HttpMethod,
    pub operation: OperationBuilder,
}

pub fn schema_ref(name: &str) -> Ref {
    Ref::from_schema_name(name)
}

pub fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", ContentBuilder::new().schema(Some(schema_ref("Problem"))).build())
        .build()
}

pub fn json(description: &str, schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

pub fn id_parameter() -> utoipa::openapi::path::Parameter {
    path_parameter("id")
}

/// A required string parameter of the path.
pub fn path_parameter(name: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
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

    pub fn with_id(self) -> Self {
        self.with_path_parameter("id")
    }

    pub fn with_path_parameter(mut self, name: &str) -> Self {
        self.operation = self.operation.parameter(path_parameter(name));
        self
    }

    pub fn with_body(mut self, content_type: &str, schema: &str) -> Self {
        self.operation = self.operation.request_body(Some(body(content_type, schema)));
        self.problem(400, "Malformed JSON, or a field missing, blank or of the wrong type (`field` names it)")
            .problem(413, "The body is larger than the server accepts")
            .problem(415, "The content type is not the one expected")
    }
}

impl<S: Clone + Send + Sync + 'static> Default for Api<S> {
    fn default() -> Self {
        let mut api = Api { router: Router::new(), paths: PathsBuilder::new(), schemas: Vec::new() };
        api.schema::<Problem>();
        api
    }
}

impl<S: Clone + Send + Sync + 'static> Api<S> {
    /// Adds `T`'s schema and those it refers to.
    pub fn schema<T: ToSchema>(&mut self) {
        self.schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(&mut self.schemas);
    }

    /// Mounts `methods` at `path`, described by `ops`.
    pub fn route(mut self, path: &str, methods: MethodRouter<S>, ops: Vec<Op>) -> Self {
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

    pub fn finish(self) -> (Router<S>, OpenApi) {
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
