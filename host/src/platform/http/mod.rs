//! HTTP building blocks shared by the platform's admin API and the
//! application's routes: the one error shape, request parsing, routes
//! mounted together with their OpenAPI description, and a deadline per
//! request.

pub mod deadline;
pub mod openapi;
pub mod problem;
pub mod request;

pub use problem::Problem;
