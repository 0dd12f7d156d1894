//! The app-facing handle: connect, send, read, typing, ping, events, close.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use switchboard_proto::frames::{ClientFrame, MAX_FRAME_BYTES};
use switchboard_proto::ids::{Address, ConvId, MsgId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::conn::{Command, Task, dial, frame_text};
use crate::error::ClientError;
use crate::event::Event;
use crate::options::ClientOptions;
use crate::outbox::{Entry, Sent};
use crate::rest::ws_url;
use crate::signin::Session;

/// A live client: a background task owns the WebSocket (see the crate docs).
/// Dropping it closes the connection; [`Client::close`] does so cleanly.
pub struct Client {
    handle: ClientHandle,
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
}

/// A cheap, cloneable way to act on a [`Client`] from other tasks.
#[derive(Clone, Debug)]
pub struct ClientHandle {
    cmds: mpsc::UnboundedSender<Command>,
    user: Address,
}

impl Client {
    /// Connect to the gateway at `base_url` (`http://host:port`) with a
    /// signed-in session. Returns once the first connection is authenticated;
    /// after that the client reconnects by itself.
    pub async fn connect(
        base_url: &str,
        session: &Session,
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        Client::connect_with_token(base_url, &session.token, opts).await
    }

    /// [`Client::connect`] with a bare session token.
    pub async fn connect_with_token(
        base_url: &str,
        token: &str,
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        let url = ws_url(base_url)?;
        let first = dial(&url, token, &opts.tls, opts.connect_timeout).await?;
        let user = first.user;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let task = Task::new(url, token.to_owned(), opts, cmd_rx, ev_tx);
        let task = tokio::spawn(task.run(first));
        Ok(Client {
            handle: ClientHandle { cmds: cmd_tx, user },
            events: ev_rx,
            task,
        })
    }

    /// The signed-in wallet.
    pub fn user(&self) -> Address {
        self.handle.user
    }

    /// A cloneable handle for sending from other tasks.
    pub fn handle(&self) -> ClientHandle {
        self.handle.clone()
    }

    /// See [`ClientHandle::send`].
    pub fn send(&self, conv: &ConvId, body: impl Serialize) -> PendingSend {
        self.handle.send(conv, body)
    }

    /// See [`ClientHandle::send_with_id`].
    pub fn send_with_id(&self, conv: &ConvId, id: MsgId, body: impl Serialize) -> PendingSend {
        self.handle.send_with_id(conv, id, body)
    }

    /// See [`ClientHandle::read`].
    pub fn read(&self, conv: &ConvId, seq: u64) -> Result<(), ClientError> {
        self.handle.read(conv, seq)
    }

    /// See [`ClientHandle::typing`].
    pub fn typing(&self, conv: &ConvId) -> Result<(), ClientError> {
        self.handle.typing(conv)
    }

    /// See [`ClientHandle::ping`].
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.handle.ping().await
    }

    /// See [`ClientHandle::track`].
    pub fn track(&self, conv: &ConvId) -> Result<(), ClientError> {
        self.handle.track(conv)
    }

    /// See [`ClientHandle::track_from`].
    pub fn track_from(&self, conv: &ConvId, after: u64) -> Result<(), ClientError> {
        self.handle.track_from(conv, after)
    }

    /// The next event; `None` once the client has stopped (closed, or the
    /// server refused the session) and every event was read.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The event queue itself (for `select!` loops). It is unbounded: read it.
    pub fn events(&mut self) -> &mut mpsc::UnboundedReceiver<Event> {
        &mut self.events
    }

    /// Close the connection cleanly (close frame 1000) and stop the task.
    /// Sends still waiting for `sent` fail with [`ClientError::Closed`].
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.handle.cmds.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

impl ClientHandle {
    /// The signed-in wallet.
    pub fn user(&self) -> Address {
        self.user
    }

    /// Send `body` (any JSON value) to `conv` with a fresh random message id.
    /// The message enters the outbox at once, in call order; the returned
    /// future resolves with the server's `sent` (or a rejection) and need not
    /// be polled for the message to go out. Composed while disconnected, it
    /// goes out after the reconnect; interrupted, it is resent with the same
    /// id, so it is stored exactly once.
    pub fn send(&self, conv: &ConvId, body: impl Serialize) -> PendingSend {
        self.send_with_id(conv, MsgId::random(), body)
    }

    /// [`ClientHandle::send`] with the app's own idempotency key.
    pub fn send_with_id(&self, conv: &ConvId, id: MsgId, body: impl Serialize) -> PendingSend {
        let failed = |id: MsgId, e: ClientError| PendingSend {
            id,
            state: PendingState::Failed(Some(e)),
        };
        let body = match serde_json::value::to_raw_value(&body) {
            Ok(b) => b,
            Err(e) => {
                return failed(
                    id,
                    ClientError::Protocol(format!("cannot encode body: {e}")),
                );
            }
        };
        let frame = ClientFrame::Send {
            conv: conv.clone(),
            id: id.clone(),
            body,
        };
        let text = match frame_text(&frame) {
            Ok(t) => t,
            Err(e) => return failed(id, e),
        };
        if text.len() > MAX_FRAME_BYTES {
            let size = text.len();
            return failed(
                id,
                ClientError::TooLarge {
                    size,
                    limit: MAX_FRAME_BYTES,
                },
            );
        }
        let (tx, rx) = oneshot::channel();
        let entry = Entry::new(id.clone(), conv.clone(), text, tx);
        if self.cmds.send(Command::Send(entry)).is_err() {
            return failed(id, ClientError::Closed);
        }
        PendingSend {
            id,
            state: PendingState::Waiting(rx),
        }
    }

    /// Mark `conv` read up to `seq` (sent now, or after the reconnect).
    pub fn read(&self, conv: &ConvId, seq: u64) -> Result<(), ClientError> {
        self.command(Command::Read {
            conv: conv.clone(),
            seq,
        })
    }

    /// Tell the other members the user is typing (dropped while disconnected).
    pub fn typing(&self, conv: &ConvId) -> Result<(), ClientError> {
        self.command(Command::Typing { conv: conv.clone() })
    }

    /// Round trip to the gateway.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Ping(tx))?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Follow `conv` from its first retained message: sync it now and after
    /// every reconnect. A conversation already followed keeps its position.
    pub fn track(&self, conv: &ConvId) -> Result<(), ClientError> {
        self.track_from(conv, 0)
    }

    /// Follow `conv`, holding everything up to `after` already (e.g. a seq
    /// the app persisted): only later messages are synced.
    pub fn track_from(&self, conv: &ConvId, after: u64) -> Result<(), ClientError> {
        self.command(Command::Track {
            conv: conv.clone(),
            after,
        })
    }

    /// Ask the client to close; [`Client::close`] also waits for it.
    pub fn close(&self) {
        let (tx, _rx) = oneshot::channel();
        let _ = self.cmds.send(Command::Close(tx));
    }

    fn command(&self, c: Command) -> Result<(), ClientError> {
        self.cmds.send(c).map_err(|_| ClientError::Closed)
    }
}

/// The answer to one [`ClientHandle::send`]: resolves with the server's `sent`.
/// Dropping it does not cancel the send.
#[must_use = "the message is sent either way; await this to learn its seq"]
pub struct PendingSend {
    id: MsgId,
    state: PendingState,
}

enum PendingState {
    Waiting(oneshot::Receiver<Result<Sent, ClientError>>),
    Failed(Option<ClientError>),
}

impl PendingSend {
    /// The message id (the idempotency key) of this send.
    pub fn id(&self) -> &MsgId {
        &self.id
    }
}

impl Future for PendingSend {
    type Output = Result<Sent, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            PendingState::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(ClientError::Closed))),
            PendingState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(ClientError::Closed))),
        }
    }
}
