//! Request counting: a per-try pipeline policy that counts every request handed to the
//! transport (SDK retries and each range of a partitioned download included), labelled with
//! the [`Op`] the adapter put into the call's `Context`. `azure::build` installs it; the
//! counter it feeds is [`StorageRequests`], which `startup` registers as
//! `rollq_storage_requests_total{op}`.
//!
//! Why a per-try policy: retries happen inside the SDK's retry policy, below anything the
//! adapter can see, and on real Azure every try is a billed transaction.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientMethodOptions, Context, Request};

use crate::metrics::StorageRequests;
use crate::storage::Op;

/// Options that carry `op` to [`CountRequests`] through the call's `Context`.
///
/// Every adapter call passes these: the SDK clones a call's options (context included) into
/// each try and each download range, so the label follows the request wherever it goes.
pub(super) fn labelled(op: Op) -> ClientMethodOptions<'static> {
    ClientMethodOptions {
        context: Context::new().with_value(op),
    }
}

/// Counts each try in [`StorageRequests`], under the `Op` in the context (`other` without one).
#[derive(Debug)]
pub(super) struct CountRequests {
    requests: StorageRequests,
}

impl CountRequests {
    pub(super) fn policy(requests: StorageRequests) -> Arc<dyn Policy> {
        Arc::new(CountRequests { requests })
    }
}

// The trait's `&Context` elides its lifetime; naming it here would not match the trait.
#[allow(elided_lifetimes_in_paths)]
#[async_trait]
impl Policy for CountRequests {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        // Counted before sending: a try that times out or is reset was still sent (and, on
        // real Azure, may still be billed).
        self.requests.count(ctx.value::<Op>().copied());
        next[0].send(ctx, request, &next[1..]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{
        AsyncRawResponse, ClientOptions, ExponentialRetryOptions, Method, Pipeline, RetryOptions,
        StatusCode, Transport, Url, headers::Headers,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A transport stand-in: answers 503 to the first `fail` tries, then 200, and counts tries.
    #[derive(Debug)]
    struct Flaky {
        fail: usize,
        tries: AtomicUsize,
    }

    #[allow(elided_lifetimes_in_paths)]
    #[async_trait]
    impl Policy for Flaky {
        async fn send(
            &self,
            _ctx: &Context,
            _request: &mut Request,
            _next: &[Arc<dyn Policy>],
        ) -> PolicyResult {
            let n = self.tries.fetch_add(1, Ordering::SeqCst);
            let status = if n < self.fail {
                StatusCode::ServiceUnavailable
            } else {
                StatusCode::Ok
            };
            Ok(AsyncRawResponse::from_bytes(
                status,
                Headers::new(),
                Vec::<u8>::new(),
            ))
        }
    }

    fn pipeline(requests: &StorageRequests, transport: Arc<Flaky>) -> Pipeline {
        let options = ClientOptions {
            per_try_policies: vec![CountRequests::policy(requests.clone())],
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(1),
                max_retries: 4,
                max_total_elapsed: azure_core::time::Duration::seconds(30),
                max_delay: azure_core::time::Duration::milliseconds(2),
            }),
            transport: Some(Transport::with_policy(transport)),
            ..Default::default()
        };
        Pipeline::new(
            Some("rollq-test"),
            Some("0"),
            options,
            Vec::new(),
            Vec::new(),
            None,
        )
    }

    #[tokio::test]
    async fn counts_every_try_under_the_calls_op() {
        let requests = StorageRequests::default();
        let transport = Arc::new(Flaky {
            fail: 2,
            tries: AtomicUsize::new(0),
        });
        let p = pipeline(&requests, transport.clone());
        let url = Url::parse("http://127.0.0.1:1/c/b").unwrap();
        let mut req = Request::new(url.clone(), Method::Get);
        let rsp = p
            .send(&labelled(Op::Download).context, &mut req, None)
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::Ok);
        // Two 503s retried by the SDK, then the 200: three tries reached the transport.
        assert_eq!(transport.tries.load(Ordering::SeqCst), 3);
        assert_eq!(requests.get(Some(Op::Download)), 3);
        assert_eq!(requests.get(Some(Op::Upload)), 0);

        // A call without a label is still counted, as `other`.
        let mut req = Request::new(url, Method::Get);
        p.send(&Context::new(), &mut req, None).await.unwrap();
        assert_eq!(requests.get(None), 1);
        assert_eq!(requests.total(), 4);
    }
}
