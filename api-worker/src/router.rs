//! The route table, built once per isolate (`app::ROUTES`), and what a handler is given
//! ([`Ctx`]). Paths are matched by matchit, the matcher worker's own `Router` uses, with the same
//! patterns (`/api/tasks/:id`, `/files/*key`) and the same answers: a path that another method
//! (not HEAD, OPTIONS or TRACE) has a route for is 405, any other unknown one 404. A second route
//! of one method on one path was a panic on every request with worker's `Router`; here the first
//! stays, the second is logged when the table is built, and this module's test fails on it.
//!
//! Why not worker's `Router`: it owns the request's data, so it is built, and dropped, for every
//! request: some 60 boxed handlers and matchit inserts, on the one JavaScript thread every local
//! request shares (a CPU profile showed `add_handler`, the inserts and the table's drop on every
//! submit). This table holds no request data: the request's [`App`] travels in [`Ctx`]. Measured
//! under `cargo xtask dev` on fresh state, 5 rounds of 400 submits from 8 clients each: 176–206
//! submits/s (p50 37–44 ms) with a table per request, 290–309 (p50 24–27 ms) with this one.

use crate::context::App;
use futures::future::LocalBoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use worker::{Method, Request, Response};

/// A route's handler, shared by every request the isolate serves.
type Handler = Rc<dyn Fn(Request, Ctx) -> LocalBoxFuture<'static, worker::Result<Response>>>;

/// A route's context: the request's [`App`] as `data`, and the path's parameters.
pub struct Ctx {
    pub data: Rc<App>,
    params: Vec<(String, String)>,
}

impl Ctx {
    pub fn new(data: Rc<App>, params: Vec<(String, String)>) -> Self {
        Ctx { data, params }
    }

    /// The value of a path parameter (`:id`, `*key`).
    pub fn param(&self, name: &str) -> Option<&String> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// The table every module adds its routes to (`fn routes(r: Routes) -> Routes`).
#[derive(Default)]
pub struct Routes {
    by_method: HashMap<Method, matchit::Router<Handler>>,
    /// Routes matchit refused (a second route of one method on one path): logged when the table
    /// is built, and this module's test fails on any.
    pub refused: Vec<String>,
}

/// Where a request goes.
pub enum Route {
    To(Handler, Vec<(String, String)>),
    /// The path is registered, for other methods.
    MethodNotAllowed,
    NotFound,
}

impl Routes {
    /// Adds a route. Two routes of one method on one path is a programming error: the first
    /// stays, the second is listed in `refused`, and this module's test fails before any deploy.
    fn add<F, Fut>(mut self, method: Method, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Ctx) -> Fut + 'static,
        Fut: Future<Output = worker::Result<Response>> + 'static,
    {
        let handler: Handler = Rc::new(move |req, ctx| Box::pin(handler(req, ctx)));
        if let Err(e) = self
            .by_method
            .entry(method.clone())
            .or_default()
            .insert(pattern, handler)
        {
            self.refused.push(format!("{method:?} {pattern}: {e}"));
        }
        self
    }

    pub fn get_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Ctx) -> Fut + 'static,
        Fut: Future<Output = worker::Result<Response>> + 'static,
    {
        self.add(Method::Get, pattern, handler)
    }

    pub fn head_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Ctx) -> Fut + 'static,
        Fut: Future<Output = worker::Result<Response>> + 'static,
    {
        self.add(Method::Head, pattern, handler)
    }

    pub fn post_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Ctx) -> Fut + 'static,
        Fut: Future<Output = worker::Result<Response>> + 'static,
    {
        self.add(Method::Post, pattern, handler)
    }

    pub fn put_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Ctx) -> Fut + 'static,
        Fut: Future<Output = worker::Result<Response>> + 'static,
    {
        self.add(Method::Put, pattern, handler)
    }

    pub fn delete_async<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Ctx) -> Fut + 'static,
        Fut: Future<Output = worker::Result<Response>> + 'static,
    {
        self.add(Method::Delete, pattern, handler)
    }

    /// The handler for `method` on `path`, with the path's parameters.
    pub fn find(&self, method: &Method, path: &str) -> Route {
        if let Some(Ok(found)) = self.by_method.get(method).map(|r| r.at(path)) {
            let params = found
                .params
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            return Route::To(found.value.clone(), params);
        }
        // as worker's Router decides it: a HEAD, OPTIONS or TRACE route makes no 405
        let elsewhere = self.by_method.iter().any(|(m, r)| {
            !matches!(m, Method::Head | Method::Options | Method::Trace) && r.at(path).is_ok()
        });
        if elsewhere {
            Route::MethodNotAllowed
        } else {
            Route::NotFound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ok(_: Request, _: Ctx) -> worker::Result<Response> {
        unreachable!("never called: the tests only route")
    }

    fn table() -> Routes {
        Routes::default()
            .get_async("/api/tasks", ok)
            .post_async("/api/tasks", ok)
            .get_async("/api/tasks/:id/results/:n", ok)
            .get_async("/files/*key", ok)
            .head_async("/files/*key", ok)
    }

    fn params(r: Route) -> Vec<(String, String)> {
        match r {
            Route::To(_, p) => p,
            Route::MethodNotAllowed => panic!("405"),
            Route::NotFound => panic!("404"),
        }
    }

    #[test]
    fn paths_route_with_their_parameters() {
        let t = table();
        assert!(params(t.find(&Method::Post, "/api/tasks")).is_empty());
        assert_eq!(
            params(t.find(&Method::Get, "/api/tasks/abc/results/1")),
            vec![("id".into(), "abc".into()), ("n".into(), "1".into())]
        );
        assert_eq!(
            params(t.find(&Method::Head, "/files/result/a/b.png")),
            vec![("key".into(), "result/a/b.png".into())]
        );
    }

    #[test]
    fn a_second_route_on_a_path_is_refused_and_the_first_stays() {
        let t = table().post_async("/api/tasks", ok);
        assert_eq!(t.refused.len(), 1, "{:?}", t.refused);
        assert!(matches!(t.find(&Method::Post, "/api/tasks"), Route::To(..)));
    }

    #[test]
    fn other_methods_are_405_and_unknown_paths_404() {
        let t = table();
        assert!(matches!(
            t.find(&Method::Delete, "/api/tasks"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(
            t.find(&Method::Head, "/api/tasks"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(t.find(&Method::Get, "/api/nope"), Route::NotFound));
        // a HEAD route alone makes no 405 for GET, as in worker's Router
        let head_only = Routes::default().head_async("/probe", ok);
        assert!(matches!(
            head_only.find(&Method::Get, "/probe"),
            Route::NotFound
        ));
    }

    /// Every module's routes go into one table without a clash (a clash would leave its route
    /// out, logged when the worker builds the table at its first request).
    #[test]
    fn the_api_s_table_builds() {
        let t = crate::app::routes(Routes::default());
        assert_eq!(t.refused, Vec::<String>::new());
        assert!(matches!(t.find(&Method::Post, "/api/tasks"), Route::To(..)));
        assert!(matches!(
            t.find(&Method::Get, "/admin/tasks/x"),
            Route::To(..)
        ));
    }
}
