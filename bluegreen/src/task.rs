//! Tasks tied to the scope that started them.

use tokio::task::JoinHandle;

/// A task that ends when this is dropped: with the session, the run or the
/// error path that started it, instead of outliving it in the runtime.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
