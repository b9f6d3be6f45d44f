//! A TCP proxy on 127.0.0.1 for links that must break: its connections can
//! be cut all at once (a link through it flaps), and its target changed
//! (what it fronts moved, as a Service does after a failover).

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// The proxy; it stops accepting when dropped.
pub struct Proxy {
    /// Where it listens, `127.0.0.1:port`.
    pub address: String,
    target: Arc<Mutex<String>>,
    cut: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` (`host:port`).
    pub async fn to(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("bound").to_string();
        let cut = Arc::new(tokio::sync::Notify::new());
        let target = Arc::new(Mutex::new(target));
        let (notify, to) = (cut.clone(), target.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = to.lock().expect("lock").clone();
                let notify = notify.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = notify.notified() => {}
                    }
                });
            }
        });
        Self {
            address,
            target,
            cut,
            task,
        }
    }

    /// Ends every connection through the proxy now.
    pub fn cut(&self) {
        self.cut.notify_waiters();
    }

    /// Sends new connections to `target` from now on.
    pub fn retarget(&self, target: String) {
        *self.target.lock().expect("lock") = target;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
