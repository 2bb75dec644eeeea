//! What every watch the daemon keeps over a service shares: each interval,
//! read the service as it is now and go one round over it, until the
//! service no longer asks for the watch. Health and load are watches; the
//! next ones (metric analysis) only say what a round does.

use std::{future::Future, ops::ControlFlow, time::Duration};

use bluegreen::{
    Error,
    host::{Host, ServiceView},
};

use crate::observations::Shared;

/// One kind of watch over a service.
pub(super) trait Watch: Send + 'static {
    /// The service's settings for the watch, from its record.
    type Settings: Send + Sync;

    /// The settings, or `None` when the service no longer asks for the
    /// watch (an `up` or a reload dropped it): the watch then ends.
    fn settings(view: &ServiceView) -> Option<Self::Settings>;

    fn interval(settings: &Self::Settings) -> Duration;

    /// Stops reporting what the watch published of the service `name`
    /// (the service is gone, or no longer watched).
    fn forget(name: &str, observations: &Shared);

    /// One round over the service; `Break` when the runtime is shutting
    /// down under it.
    fn round(
        &mut self,
        host: &Host,
        name: &str,
        view: &ServiceView,
        settings: &Self::Settings,
        observations: &Shared,
    ) -> impl Future<Output = ControlFlow<()>> + Send;
}

/// Runs `watch` over the service `name` until it no longer asks for it or
/// the runtime shuts down.
pub(super) async fn keep_watching<W: Watch>(
    host: Host,
    name: String,
    observations: Shared,
    mut watch: W,
) {
    let forget = || W::forget(&name, &observations);
    while let Some(view) = next_view(&host, &name, &forget).await {
        let Some(settings) = W::settings(&view) else {
            forget();
            return;
        };
        if watch
            .round(&host, &name, &view, &settings, &observations)
            .await
            .is_break()
        {
            return;
        }
        tokio::time::sleep(W::interval(&settings)).await;
    }
}

/// Whether `error` says the service is no longer up (an `up` removed it, or
/// a `down` took everything), rather than that its state could not be read
/// this time.
fn is_gone(error: &Error) -> bool {
    matches!(
        error,
        Error::UnknownService { .. }
            | Error::NothingUp
            | Error::NotUpOn { .. }
            | Error::ServiceNotLive { .. }
    )
}

/// The service as it is now, for a watch's next round; `None` when the
/// runtime is shutting down. A failed read is logged and retried a second
/// later, after `forget` when the service is gone (so that its figures stop
/// being reported while the watch waits for it to come back).
async fn next_view(host: &Host, name: &str, forget: impl Fn()) -> Option<ServiceView> {
    loop {
        let view = {
            let (host, name) = (host.clone(), name.to_owned());
            tokio::task::spawn_blocking(move || host.service_view(Some(&name))).await
        };
        match view {
            Ok(Ok(view)) => return Some(view),
            Ok(Err(error)) => {
                if is_gone(&error) {
                    forget();
                }
                log::warn!("{name}: cannot read its state: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => return None,
        }
    }
}
