//! The one macro both contract suites instantiate their checks with: a `#[tokio::test]` per
//! check and backend, building the backend and running the check against it.

/// `contract!(module => Backend, ...: (check, ...))`: per backend, a module of tests, one per
/// check, each building `Backend::new().await?` and returning the check's `TestResult`.
macro_rules! contract {
    ($($module:ident => $backend:ident),+ : $checks:tt) => {
        $(contract!(@suite $module => $backend: $checks);)+
    };
    (@suite $module:ident => $backend:ident: ($($check:ident),* $(,)?)) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $check() -> super::TestResult {
                    let backend = super::$backend::new().await?;
                    super::$check(&backend).await
                }
            )*
        }
    };
}
