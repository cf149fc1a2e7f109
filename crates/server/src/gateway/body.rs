//! Body wrappers: the request body handed to the upstream client, which comes back when the
//! client drops it unread (so a request whose connection failed can go to another replica), and
//! the response body that keeps its replica's in-flight count for as long as it streams.

use super::pool::InFlight;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Where an unread request body goes back to when the client gives up on it.
pub(crate) type Returned = Arc<Mutex<Option<Body>>>;

/// The client's request body on its way to one replica. Passes frames through untouched; if it
/// is dropped before it yielded any, the body is put back into `returned`, whole.
pub(crate) struct Outgoing {
    inner: Option<Body>,
    started: bool,
    returned: Returned,
}

impl Outgoing {
    pub fn new(body: Body, returned: Returned) -> Self {
        Outgoing {
            inner: Some(body),
            started: false,
            returned,
        }
    }
}

impl http_body::Body for Outgoing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(_)) = &polled {
            this.started = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if self.started {
            return;
        }
        if let Some(body) = self.inner.take() {
            let mut slot = self
                .returned
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *slot = Some(body);
        }
    }
}

/// A replica's response body, streamed to the client as it comes; holds the request's
/// in-flight count until it ends or the client goes away.
pub(crate) struct Guarded<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Guarded {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
